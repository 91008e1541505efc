// Drives the fake HubSpot with HubSpot's official Node client (generated from HubSpot's
// OpenAPI descriptions): list with paging, search, batch upsert, archive, and a 429. The
// client deserializes every answer into its typed models, so an answer of the wrong shape
// fails here. Run by the fake's `contract` test, with HUBSPOT_BASE_URL and HUBSPOT_TOKEN set.
import assert from 'node:assert/strict';
import hubspot from '@hubspot/api-client';

const basePath = process.env.HUBSPOT_BASE_URL;
const accessToken = process.env.HUBSPOT_TOKEN;
const client = new hubspot.Client({ accessToken, basePath, numberOfApiCallRetries: 0 });
const contacts = client.crm.contacts;

// Batch upsert by email: 3 new records.
const inputs = ['a', 'b', 'c'].map((n) => ({ id: `${n}@x.io`, idProperty: 'email', properties: { firstname: n } }));
const upserted = await contacts.batchApi.upsert({ inputs });
assert.equal(upserted.results.length, 3);
assert.equal(upserted.results[0]._new ?? upserted.results[0]['new'], true);
assert.ok(upserted.results[0].updatedAt instanceof Date);

// List with limit and after paging.
const first = await contacts.basicApi.getPage(2, undefined, ['email']);
assert.equal(first.results.length, 2);
assert.equal(typeof first.paging.next.after, 'string');
const second = await contacts.basicApi.getPage(2, first.paging.next.after, ['email']);
assert.equal(second.results.length, 1);
assert.equal(second.paging, undefined);
assert.equal(second.results[0].properties.email, 'c@x.io');

// Search with a filter and a sort.
const found = await contacts.searchApi.doSearch({
  filterGroups: [{ filters: [{ propertyName: 'firstname', operator: 'EQ', value: 'b' }] }],
  sorts: ['email'],
  properties: ['email', 'lastmodifieddate'],
  limit: 10,
});
assert.equal(found.total, 1);
assert.equal(found.results[0].properties.email, 'b@x.io');

// Archive, then the list's archived view.
await contacts.batchApi.archive({ inputs: [{ id: found.results[0].id }] });
const archived = await contacts.basicApi.getPage(10, undefined, ['email'], undefined, undefined, true);
assert.equal(archived.results.length, 1);
assert.ok(archived.results[0].archivedAt instanceof Date);

// A 429 once the fake's limit (set by the test) is spent.
let throttled = null;
for (let i = 0; i < 20 && !throttled; i++) {
  try {
    await contacts.basicApi.getPage(1);
  } catch (e) {
    throttled = e;
  }
}
assert.ok(throttled, 'expected a 429');
assert.equal(throttled.code, 429);
assert.equal(throttled.body.errorType, 'RATE_LIMIT');
assert.equal(throttled.headers['x-hubspot-ratelimit-remaining'], '0');

console.log('contract: ok');
