//! Writing a stream through Medusa's admin API, one record a request, several requests at
//! once (up to the connection's `concurrency`, which the HTTP kit's client enforces together
//! with the rate budget). Requests for the same key run one after another, in row order, so
//! two rows of one batch for the same record behave as they would one at a time.
//!
//! - `products`, found by `handle` or `id`: created with `POST /admin/products` (with
//!   Medusa's "Default option" when the row names no options, as Medusa's own admin does) or
//!   updated with `POST /admin/products/{id}`; `category_ids` sets the product's categories.
//!   Deleting deletes (`DELETE`, leaving a tombstone) or unpublishes (status `draft`), as the
//!   connection's `product_delete` says.
//! - `product_variants`, found by `sku` or `id`, under the product named by `product_id` or
//!   `product_handle`: created with `POST /admin/products/{id}/variants` or updated with
//!   `POST /admin/products/{id}/variants/{variant}`. The `price_<currency>` columns written
//!   set those currencies' plain prices (a null removes one); the variant's prices in other
//!   currencies are kept.
//! - `inventory_levels`, found by (`sku` or `inventory_item_id`, `location_id`): the stocked
//!   (and incoming) quantity of an inventory item at a stock location, the level created
//!   when missing.
//! - `product_categories`, found by `handle` or `id`.
//!
//! `customers` and `orders` are read-only here. A record Medusa refuses (a duplicate SKU or
//! handle, an invalid value; any 4xx but authentication and rate limiting) becomes a reject
//! of that row with Medusa's own message; the rows around it are written.

use std::collections::{BTreeMap, HashMap};

use futures_util::stream::{self, StreamExt};

use lockstep_http_kit::convert::{json_from_batch, JsonField, ValueStyle};
use lockstep_http_kit::{HttpClient, HttpError, Method, Request};
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::{
    ConnectorError, OpenStreamRequest, RejectedRow, Result, StreamWriter, WriteOutcome,
};
use serde_json::{json, Map, Value};

use crate::config::ProductDelete;
use crate::streams::{self, plain_price, price_field};

/// Keys looked up per list request.
const LOOKUP_CHUNK: usize = 50;

/// The option Medusa's admin gives a product that has no options of its own.
const DEFAULT_OPTION: &str = "Default option";
const DEFAULT_OPTION_VALUE: &str = "Default option value";

/// How rows find their record.
#[derive(Debug, Clone, PartialEq)]
enum Key {
    Id,
    Handle,
    Sku,
    /// Inventory levels: the item by SKU (or by id), and the location.
    Level {
        by_sku: bool,
    },
}

/// Writes to one stream.
pub struct MedusaWriter {
    client: HttpClient,
    stream: &'static str,
    key: Key,
    fields: Vec<JsonField>,
    currencies: Vec<String>,
    product_delete: ProductDelete,
}

/// The fields each writable stream accepts (besides `id`, and the price columns of
/// variants).
fn writable(stream: &str) -> Option<&'static [&'static str]> {
    Some(match stream {
        "products" => &[
            "title",
            "handle",
            "subtitle",
            "description",
            "status",
            "external_id",
            "thumbnail",
            "is_giftcard",
            "discountable",
            "weight",
            "collection_id",
            "type_id",
            "category_ids",
            "options",
            "metadata",
        ],
        "product_variants" => &[
            "product_id",
            "product_handle",
            "title",
            "sku",
            "barcode",
            "ean",
            "upc",
            "allow_backorder",
            "manage_inventory",
            "variant_rank",
            "options",
            "metadata",
        ],
        "product_categories" => &[
            "name",
            "handle",
            "description",
            "external_id",
            "is_active",
            "is_internal",
            "rank",
            "parent_category_id",
            "metadata",
        ],
        "inventory_levels" => &[
            "inventory_item_id",
            "sku",
            "location_id",
            "stocked_quantity",
            "incoming_quantity",
        ],
        _ => return None,
    })
}

pub(crate) fn open(
    client: HttpClient,
    stream: &'static str,
    currencies: Vec<String>,
    product_delete: ProductDelete,
    request: OpenStreamRequest,
) -> Result<MedusaWriter> {
    let Some(allowed) = writable(stream) else {
        return Err(ConnectorError::config(format!(
            "Medusa {stream} are read-only in this connector; sync them out of Medusa, not into \
             it (docs/medusa.md)"
        )));
    };
    let key = match (stream, request.key.as_slice()) {
        (_, [k]) if k == "id" => Key::Id,
        ("products" | "product_categories", [k]) if k == "handle" => Key::Handle,
        ("product_variants", [k]) if k == "sku" => Key::Sku,
        ("inventory_levels", keys)
            if keys.len() == 2 && keys.iter().any(|k| k == "location_id") =>
        {
            if keys.iter().any(|k| k == "sku") {
                Key::Level { by_sku: true }
            } else if keys.iter().any(|k| k == "inventory_item_id") {
                Key::Level { by_sku: false }
            } else {
                return Err(key_error(stream, &request.key));
            }
        }
        _ => return Err(key_error(stream, &request.key)),
    };
    if key == Key::Id && stream == "inventory_levels" {
        return Err(key_error(stream, &request.key));
    }
    let all = streams::fields(stream, &currencies);
    let mut fields = Vec::new();
    for field in &request.fields {
        let is_price =
            stream == "product_variants" && currencies.iter().any(|c| price_field(c) == field.name);
        if field.name != "id" && !is_price && !allowed.contains(&field.name.as_str()) {
            let known = all.iter().any(|f| f.field.name == field.name);
            return Err(ConnectorError::schema(if known {
                format!(
                    "`{}` of Medusa {stream} is read-only (Medusa sets it); leave it out of the \
                     sync's fields",
                    field.name
                )
            } else {
                format!(
                    "Medusa {stream} have no field `{}`; the writable fields are id, {}{}",
                    field.name,
                    allowed.join(", "),
                    if stream == "product_variants" {
                        format!(
                            ", and one price column per store currency ({})",
                            currencies
                                .iter()
                                .map(|c| price_field(c))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    } else {
                        String::new()
                    }
                )
            }));
        }
        let mut json_field = all
            .iter()
            .find(|f| f.field.name == field.name)
            .cloned()
            .unwrap_or_else(|| JsonField::top_level(field.clone()));
        json_field.field.data_type = field.data_type;
        fields.push(json_field);
    }
    Ok(MedusaWriter {
        client,
        stream,
        key,
        fields,
        currencies,
        product_delete,
    })
}

fn key_error(stream: &str, key: &[String]) -> ConnectorError {
    let wanted = match stream {
        "products" | "product_categories" => "`handle` or `id`",
        "product_variants" => "`sku` or `id`",
        _ => "`[\"sku\", \"location_id\"]` or `[\"inventory_item_id\", \"location_id\"]`",
    };
    ConnectorError::config(format!(
        "Medusa {stream} are found by {wanted}, not by {key:?}; set the sync's `key` to one of \
         them"
    ))
}

/// A written value as Medusa takes it: decimals (which arrive as text) as numbers.
fn to_medusa(value: &Value, numeric: bool) -> Value {
    match value {
        Value::String(s) if numeric => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| value.clone()),
        other => other.clone(),
    }
}

/// The text of a key value, if it has one.
fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// What happened to one row.
#[derive(Clone, Copy)]
enum Done {
    Inserted,
    Updated,
}

/// One row's write request, decided before any is sent.
struct Call {
    row: usize,
    /// The record the request writes: calls with the same key run in row order.
    key: String,
    method: Method,
    path: String,
    body: Value,
    what: String,
    done: Done,
}

impl MedusaWriter {
    fn numeric(&self, name: &str) -> bool {
        self.fields.iter().any(|f| {
            f.field.name == name
                && matches!(
                    f.field.data_type,
                    lockstep_plugin_sdk::DataType::Decimal { .. }
                )
        })
    }

    /// Sends one request, answering JSON.
    async fn send(
        &self,
        method: Method,
        path: String,
        body: Option<Value>,
        what: String,
    ) -> std::result::Result<Value, HttpError> {
        let mut request = Request::new(method, path).describe(what);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.client.send(&request).await?;
        if response.body.is_empty() {
            return Ok(Value::Null);
        }
        response.json()
    }

    /// Records of `path` whose `filter` is one of `values`, with `fields`.
    async fn lookup(
        &self,
        path: &str,
        list_key: &str,
        filter: &str,
        values: &[String],
        fields: &str,
    ) -> Result<Vec<Value>> {
        let mut found = Vec::new();
        for chunk in values.chunks(LOOKUP_CHUNK) {
            let mut request = Request::get(path)
                .query("fields", fields)
                .query("limit", LOOKUP_CHUNK)
                .describe(format!("finding Medusa {} by {filter}", self.stream));
            for value in chunk {
                request = request.query(format!("{filter}[]"), value);
            }
            let answer: Value = self.client.send_json(&request).await?;
            found.extend(
                answer[list_key]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .cloned(),
            );
        }
        Ok(found)
    }

    /// The body of a row: its written fields but the key-only ones, as Medusa takes them.
    fn body(&self, row: &Map<String, Value>, skip: &[&str]) -> Map<String, Value> {
        let mut body = Map::new();
        for (name, value) in row {
            if name == "id" || skip.contains(&name.as_str()) || name.starts_with("price_") {
                continue;
            }
            body.insert(name.clone(), to_medusa(value, self.numeric(name)));
        }
        body
    }

    async fn upsert_products(
        &self,
        rows: &[Map<String, Value>],
        outcome: &mut WriteOutcome,
    ) -> Result<()> {
        let (path, list_key) = match self.stream {
            "products" => ("/admin/products", "products"),
            _ => ("/admin/product-categories", "product_categories"),
        };
        let key_name = if self.key == Key::Handle {
            "handle"
        } else {
            "id"
        };
        let keys: Vec<String> = rows.iter().filter_map(|r| text(r.get(key_name))).collect();
        let existing: HashMap<String, String> = self
            .lookup(path, list_key, key_name, &keys, "id,handle")
            .await?
            .into_iter()
            .filter_map(|r| Some((text(r.get(key_name))?, text(r.get("id"))?)))
            .collect();
        let mut calls = Vec::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            let Some(key) = text(row.get(key_name)) else {
                outcome.rejected.push(RejectedRow {
                    row: index,
                    field: Some(key_name.into()),
                    reason: format!(
                        "no value for the key `{key_name}`, which finds the Medusa record"
                    ),
                });
                continue;
            };
            let mut body = self.body(row, &[]);
            if self.stream == "products" {
                match body.remove("category_ids") {
                    Some(Value::Array(ids)) => {
                        let categories: Vec<Value> =
                            ids.into_iter().map(|id| json!({ "id": id })).collect();
                        body.insert("categories".into(), Value::Array(categories));
                    }
                    Some(Value::Null) => {
                        body.insert("categories".into(), json!([]));
                    }
                    Some(other) => {
                        outcome.rejected.push(RejectedRow {
                            row: index,
                            field: Some("category_ids".into()),
                            reason: format!(
                                "`category_ids` must be a JSON list of category ids, not {other}"
                            ),
                        });
                        continue;
                    }
                    None => {}
                }
            }
            let call = match existing.get(&key) {
                Some(id) => {
                    // Since Medusa 2.16 an update takes no `options` (they have endpoints
                    // of their own); a null says nothing, so it is left out.
                    if body.get("options").is_some_and(Value::is_null) {
                        body.remove("options");
                    }
                    Call {
                        row: index,
                        method: Method::POST,
                        path: format!("{path}/{id}"),
                        body: Value::Object(body),
                        what: format!("updating the Medusa {} {key}", self.stream),
                        done: Done::Updated,
                        key,
                    }
                }
                None if self.key == Key::Id => {
                    outcome.rejected.push(RejectedRow {
                        row: index,
                        field: Some("id".into()),
                        reason: format!(
                            "Medusa has no {} with id {key}, and cannot create one with a given \
                             id; key the sync by `handle` to create records",
                            self.stream
                        ),
                    });
                    continue;
                }
                None => {
                    if self.stream == "products" {
                        strip_nulls(&mut body);
                        body.entry("options").or_insert_with(
                            || json!([{"title": DEFAULT_OPTION, "values": [DEFAULT_OPTION_VALUE]}]),
                        );
                    }
                    Call {
                        row: index,
                        method: Method::POST,
                        path: path.to_owned(),
                        body: Value::Object(body),
                        what: format!("creating the Medusa {} {key}", self.stream),
                        done: Done::Inserted,
                        key,
                    }
                }
            };
            calls.push(call);
        }
        self.run_calls(calls, outcome).await
    }

    /// Sends `calls` at once, those of one key one after another in row order, and counts
    /// their results in row order: a refusal is that row's reject, any other failure the
    /// batch's (the first in row order).
    async fn run_calls(&self, calls: Vec<Call>, outcome: &mut WriteOutcome) -> Result<()> {
        let mut groups: Vec<Vec<Call>> = Vec::new();
        let mut group_of: HashMap<String, usize> = HashMap::new();
        for call in calls {
            match group_of.get(&call.key) {
                Some(&i) => groups[i].push(call),
                None => {
                    group_of.insert(call.key.clone(), groups.len());
                    groups.push(vec![call]);
                }
            }
        }
        // The client holds each request to the connection's concurrency and rate budget.
        let mut results: Vec<(usize, std::result::Result<Done, HttpError>)> = stream::iter(groups)
            .map(|group| async move {
                let mut results = Vec::with_capacity(group.len());
                for call in group {
                    let result = self
                        .send(call.method, call.path, Some(call.body), call.what)
                        .await
                        .map(|_| call.done);
                    results.push((call.row, result));
                }
                results
            })
            .buffer_unordered(usize::MAX)
            .flat_map(stream::iter)
            .collect()
            .await;
        results.sort_by_key(|(row, _)| *row);
        for (row, result) in results {
            self.account(row, result, outcome)?;
        }
        Ok(())
    }

    /// Counts a row's result; a refusal becomes its reject, any other failure the call's.
    fn account(
        &self,
        row: usize,
        result: std::result::Result<Done, HttpError>,
        outcome: &mut WriteOutcome,
    ) -> Result<()> {
        match result {
            Ok(Done::Inserted) => *outcome.inserted.get_or_insert(0) += 1,
            Ok(Done::Updated) => *outcome.updated.get_or_insert(0) += 1,
            Err(HttpError::Refused {
                status, message, ..
            }) => outcome.rejected.push(RejectedRow {
                row,
                field: None,
                reason: format!("Medusa refused the record ({status}): {message}"),
            }),
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// The products named by `handles`, as handle -> (id, options).
    async fn products_by_handle(&self, handles: &[String]) -> Result<HashMap<String, Value>> {
        Ok(self
            .lookup(
                "/admin/products",
                "products",
                "handle",
                handles,
                "id,handle,options.title,options.values.value",
            )
            .await?
            .into_iter()
            .filter_map(|p| Some((text(p.get("handle"))?, p)))
            .collect())
    }

    async fn upsert_variants(
        &self,
        rows: &[Map<String, Value>],
        outcome: &mut WriteOutcome,
    ) -> Result<()> {
        let key_name = if self.key == Key::Sku { "sku" } else { "id" };
        let keys: Vec<String> = rows.iter().filter_map(|r| text(r.get(key_name))).collect();
        let existing: HashMap<String, Value> = self
            .lookup(
                "/admin/product-variants",
                "variants",
                key_name,
                &keys,
                "id,sku,product_id,prices.amount,prices.currency_code,prices.rules,\
                 prices.min_quantity,prices.max_quantity",
            )
            .await?
            .into_iter()
            .filter_map(|v| Some((text(v.get(key_name))?, v)))
            .collect();
        let handles: Vec<String> = rows
            .iter()
            .filter_map(|r| text(r.get("product_handle")))
            .collect();
        let mut products = self.products_by_handle(&handles).await?;
        let mut calls = Vec::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            let reject = |outcome: &mut WriteOutcome, field: &str, reason: String| {
                outcome.rejected.push(RejectedRow {
                    row: index,
                    field: Some(field.into()),
                    reason,
                });
            };
            let Some(key) = text(row.get(key_name)) else {
                reject(
                    outcome,
                    key_name,
                    format!("no value for the key `{key_name}`, which finds the variant"),
                );
                continue;
            };
            let product_id = match (text(row.get("product_id")), text(row.get("product_handle"))) {
                (Some(id), _) => Some(id),
                (None, Some(handle)) => match products.get(&handle).and_then(|p| text(p.get("id")))
                {
                    Some(id) => Some(id),
                    None => {
                        reject(
                            outcome,
                            "product_handle",
                            format!(
                                "Medusa has no product with the handle `{handle}`; write the \
                                 product first (a sync into `products` ahead of this one)"
                            ),
                        );
                        continue;
                    }
                },
                (None, None) => None,
            };
            let body = self.body(row, &["product_id", "product_handle"]);
            let call = match existing.get(&key) {
                Some(variant) => {
                    let variant_id = text(variant.get("id")).unwrap_or_default();
                    let current_product = text(variant.get("product_id")).unwrap_or_default();
                    if product_id.as_ref().is_some_and(|p| *p != current_product) {
                        reject(
                            outcome,
                            "product_id",
                            format!(
                                "the variant {key} belongs to the product {current_product}; \
                                 Medusa cannot move a variant to another product"
                            ),
                        );
                        continue;
                    }
                    let mut body = body;
                    if let Some(prices) = self.prices(row, Some(variant)) {
                        body.insert("prices".into(), prices);
                    }
                    Call {
                        row: index,
                        method: Method::POST,
                        path: format!("/admin/products/{current_product}/variants/{variant_id}"),
                        body: Value::Object(body),
                        what: format!("updating the Medusa variant {key}"),
                        done: Done::Updated,
                        key,
                    }
                }
                None if self.key == Key::Id => {
                    reject(
                        outcome,
                        "id",
                        format!(
                            "Medusa has no variant with id {key}, and cannot create one with a \
                             given id; key the sync by `sku` to create variants"
                        ),
                    );
                    continue;
                }
                None => {
                    let Some(product_id) = product_id else {
                        reject(
                            outcome,
                            "product_handle",
                            "a new variant needs its product: map `product_handle` or \
                             `product_id`"
                                .into(),
                        );
                        continue;
                    };
                    let mut body = body;
                    strip_nulls(&mut body);
                    body.entry("title").or_insert_with(|| json!(key));
                    if !body.contains_key("options") {
                        let product = match products
                            .values()
                            .find(|p| text(p.get("id")).as_deref() == Some(product_id.as_str()))
                        {
                            Some(product) => product.clone(),
                            None => {
                                let answer = self
                                    .send(
                                        Method::GET,
                                        format!("/admin/products/{product_id}?fields=id,handle,options.title,options.values.value"),
                                        None,
                                        format!("reading the options of the Medusa product {product_id}"),
                                    )
                                    .await;
                                match answer {
                                    Ok(answer) => {
                                        let product = answer["product"].clone();
                                        if let Some(handle) = text(product.get("handle")) {
                                            products.insert(handle, product.clone());
                                        }
                                        product
                                    }
                                    Err(e) => {
                                        self.account(index, Err(e), outcome)?;
                                        continue;
                                    }
                                }
                            }
                        };
                        match single_option(&product) {
                            Some(options) => {
                                body.insert("options".into(), options);
                            }
                            None => {
                                reject(
                                    outcome,
                                    "options",
                                    format!(
                                        "the product {product_id} has several options or \
                                         values, so a new variant must say which it is: map \
                                         `options` (a JSON object such as {{\"Size\": \"M\"}})"
                                    ),
                                );
                                continue;
                            }
                        }
                    }
                    if let Some(prices) = self.prices(row, None) {
                        body.insert("prices".into(), prices);
                    }
                    Call {
                        row: index,
                        method: Method::POST,
                        path: format!("/admin/products/{product_id}/variants"),
                        body: Value::Object(body),
                        what: format!("creating the Medusa variant {key}"),
                        done: Done::Inserted,
                        key,
                    }
                }
            };
            calls.push(call);
        }
        self.run_calls(calls, outcome).await
    }

    /// The variant's plain prices after the row's price columns: the current ones (of an
    /// existing variant) with each written currency set or (null) removed. `None` when the
    /// row writes no price.
    fn prices(&self, row: &Map<String, Value>, current: Option<&Value>) -> Option<Value> {
        let written: Vec<(&String, &Value)> = self
            .currencies
            .iter()
            .filter_map(|c| row.get(&price_field(c)).map(|v| (c, v)))
            .collect();
        if written.is_empty() {
            return None;
        }
        let mut prices: BTreeMap<String, Value> = BTreeMap::new();
        for price in current
            .and_then(|v| v["prices"].as_array())
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let (true, Some(currency)) = (plain_price(price), text(price.get("currency_code"))) {
                prices.insert(currency, price["amount"].clone());
            }
        }
        for (currency, value) in written {
            match to_medusa(value, true) {
                Value::Null => {
                    prices.remove(currency);
                }
                amount => {
                    prices.insert(currency.clone(), amount);
                }
            }
        }
        Some(Value::Array(
            prices
                .into_iter()
                .map(|(currency_code, amount)| json!({"currency_code": currency_code, "amount": amount}))
                .collect(),
        ))
    }

    async fn upsert_levels(
        &self,
        rows: &[Map<String, Value>],
        outcome: &mut WriteOutcome,
    ) -> Result<()> {
        let Key::Level { by_sku } = self.key else {
            unreachable!("levels are keyed by item and location")
        };
        let item_key = if by_sku { "sku" } else { "id" };
        let row_key = if by_sku { "sku" } else { "inventory_item_id" };
        let keys: Vec<String> = rows.iter().filter_map(|r| text(r.get(row_key))).collect();
        let items: HashMap<String, Value> = self
            .lookup(
                "/admin/inventory-items",
                "inventory_items",
                item_key,
                &keys,
                "id,sku,location_levels.location_id",
            )
            .await?
            .into_iter()
            .filter_map(|i| Some((text(i.get(item_key))?, i)))
            .collect();
        let mut calls = Vec::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            let (Some(item_ref), Some(location)) =
                (text(row.get(row_key)), text(row.get("location_id")))
            else {
                outcome.rejected.push(RejectedRow {
                    row: index,
                    field: Some(row_key.into()),
                    reason: format!(
                        "no value for `{row_key}` or `location_id`, which find the stock level"
                    ),
                });
                continue;
            };
            let Some(item) = items.get(&item_ref) else {
                outcome.rejected.push(RejectedRow {
                    row: index,
                    field: Some(row_key.into()),
                    reason: format!(
                        "Medusa has no inventory item with {item_key} `{item_ref}` (a variant \
                         that manages its inventory gets one); write the variant first"
                    ),
                });
                continue;
            };
            let item_id = text(item.get("id")).unwrap_or_default();
            let exists = item["location_levels"].as_array().is_some_and(|levels| {
                levels
                    .iter()
                    .any(|l| text(l.get("location_id")).as_deref() == Some(location.as_str()))
            });
            let mut body = self.body(row, &["sku", "inventory_item_id", "location_id"]);
            strip_nulls(&mut body);
            // Levels of one item are written one after another: a level's creation changes
            // the item.
            let call = if exists {
                Call {
                    row: index,
                    key: item_id.clone(),
                    method: Method::POST,
                    path: format!("/admin/inventory-items/{item_id}/location-levels/{location}"),
                    body: Value::Object(body),
                    what: format!("setting the stock of {item_ref} at {location}"),
                    done: Done::Updated,
                }
            } else {
                body.insert("location_id".into(), json!(location));
                Call {
                    row: index,
                    key: item_id.clone(),
                    method: Method::POST,
                    path: format!("/admin/inventory-items/{item_id}/location-levels"),
                    body: Value::Object(body),
                    what: format!("creating the stock level of {item_ref} at {location}"),
                    done: Done::Inserted,
                }
            };
            calls.push(call);
        }
        self.run_calls(calls, outcome).await
    }

    /// Deletes one record; one that is gone already is no error.
    async fn delete_one(&self, path: String, what: String) -> Result<bool> {
        match self.send(Method::DELETE, path, None, what).await {
            Ok(_) => Ok(true),
            Err(HttpError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// The options of a new variant of a product with exactly one option of exactly one value
/// (such as Medusa's default option).
fn single_option(product: &Value) -> Option<Value> {
    let options = product["options"].as_array()?;
    let [option] = options.as_slice() else {
        return None;
    };
    let values = option["values"].as_array()?;
    let [value] = values.as_slice() else {
        return None;
    };
    Some(json!({ option["title"].as_str()?: value["value"].clone() }))
}

/// Leaves nulls out of a body for a new record (Medusa's defaults apply).
fn strip_nulls(body: &mut Map<String, Value>) {
    body.retain(|_, v| !v.is_null());
}

impl StreamWriter for MedusaWriter {
    async fn upsert(&mut self, batch: RecordBatch) -> Result<WriteOutcome> {
        let records = json_from_batch(&self.fields, &batch, ValueStyle::default())?;
        let rows: Vec<Map<String, Value>> = records
            .into_iter()
            .map(|r| match r {
                Value::Object(map) => map,
                _ => Map::new(),
            })
            .collect();
        let mut outcome = WriteOutcome::default();
        match self.stream {
            "products" | "product_categories" => self.upsert_products(&rows, &mut outcome).await?,
            "product_variants" => self.upsert_variants(&rows, &mut outcome).await?,
            _ => self.upsert_levels(&rows, &mut outcome).await?,
        }
        outcome.rejected.sort_by_key(|r| r.row);
        Ok(outcome)
    }

    async fn delete(&mut self, keys: RecordBatch) -> Result<WriteOutcome> {
        let records = json_from_batch(&self.fields, &keys, ValueStyle::default())?;
        let mut deleted = 0u64;
        match (self.stream, &self.key) {
            ("products" | "product_categories", key) => {
                let path = if self.stream == "products" {
                    "/admin/products"
                } else {
                    "/admin/product-categories"
                };
                let key_name = if *key == Key::Handle { "handle" } else { "id" };
                let values: Vec<String> = records
                    .iter()
                    .filter_map(|r| text(r.get(key_name)))
                    .collect();
                let ids: Vec<String> = if *key == Key::Handle {
                    let list_key = if self.stream == "products" {
                        "products"
                    } else {
                        "product_categories"
                    };
                    self.lookup(path, list_key, "handle", &values, "id,handle")
                        .await?
                        .iter()
                        .filter_map(|r| text(r.get("id")))
                        .collect()
                } else {
                    values
                };
                for id in ids {
                    let gone = if self.stream == "products"
                        && self.product_delete == ProductDelete::Unpublish
                    {
                        match self
                            .send(
                                Method::POST,
                                format!("{path}/{id}"),
                                Some(json!({"status": "draft"})),
                                format!("unpublishing the Medusa product {id}"),
                            )
                            .await
                        {
                            Ok(_) => true,
                            Err(HttpError::NotFound { .. }) => false,
                            Err(e) => return Err(e.into()),
                        }
                    } else {
                        self.delete_one(
                            format!("{path}/{id}"),
                            format!("deleting the Medusa {} {id}", self.stream),
                        )
                        .await?
                    };
                    deleted += u64::from(gone);
                }
            }
            ("product_variants", key) => {
                let key_name = if *key == Key::Sku { "sku" } else { "id" };
                let values: Vec<String> = records
                    .iter()
                    .filter_map(|r| text(r.get(key_name)))
                    .collect();
                let variants = self
                    .lookup(
                        "/admin/product-variants",
                        "variants",
                        key_name,
                        &values,
                        "id,product_id",
                    )
                    .await?;
                for variant in variants {
                    let (Some(id), Some(product)) =
                        (text(variant.get("id")), text(variant.get("product_id")))
                    else {
                        continue;
                    };
                    deleted += u64::from(
                        self.delete_one(
                            format!("/admin/products/{product}/variants/{id}"),
                            format!("deleting the Medusa variant {id}"),
                        )
                        .await?,
                    );
                }
            }
            (_, Key::Level { by_sku }) => {
                let row_key = if *by_sku { "sku" } else { "inventory_item_id" };
                let item_key = if *by_sku { "sku" } else { "id" };
                let refs: Vec<String> = records
                    .iter()
                    .filter_map(|r| text(r.get(row_key)))
                    .collect();
                let items: HashMap<String, String> = self
                    .lookup(
                        "/admin/inventory-items",
                        "inventory_items",
                        item_key,
                        &refs,
                        "id,sku",
                    )
                    .await?
                    .into_iter()
                    .filter_map(|i| Some((text(i.get(item_key))?, text(i.get("id"))?)))
                    .collect();
                for record in &records {
                    let (Some(item_ref), Some(location)) =
                        (text(record.get(row_key)), text(record.get("location_id")))
                    else {
                        continue;
                    };
                    let Some(item_id) = items.get(&item_ref) else {
                        continue;
                    };
                    deleted += u64::from(
                        self.delete_one(
                            format!("/admin/inventory-items/{item_id}/location-levels/{location}"),
                            format!("deleting the stock level of {item_ref} at {location}"),
                        )
                        .await?,
                    );
                }
            }
            _ => {}
        }
        Ok(WriteOutcome {
            deleted: Some(deleted),
            ..WriteOutcome::default()
        })
    }

    async fn flush(&mut self) -> Result<()> {
        // Every request is durable once Medusa has answered it.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_product_with_one_option_of_one_value_gives_new_variants_that_option() {
        let product = json!({"options": [{"title": "Default option", "values": [{"value": "Default option value"}]}]});
        assert_eq!(
            single_option(&product),
            Some(json!({"Default option": "Default option value"}))
        );
        let sizes =
            json!({"options": [{"title": "Size", "values": [{"value": "S"}, {"value": "M"}]}]});
        assert_eq!(single_option(&sizes), None);
    }

    #[test]
    fn decimals_travel_as_numbers() {
        assert_eq!(to_medusa(&json!("12.50"), true), json!(12.5));
        assert_eq!(to_medusa(&json!("12.50"), false), json!("12.50"));
        assert_eq!(to_medusa(&Value::Null, true), Value::Null);
    }
}
