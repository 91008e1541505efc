// The Node side of lockstep_test_support::medusa: what the Rust harness cannot do without an
// HTTP or PostgreSQL client of its own. One subcommand per call:
//
//   node harness.js create-db <admin url> <database>   creates the database
//   node harness.js drop-db <admin url> <database>     drops it (when it exists)
//   node harness.js setup <base url> <email> <password>
//       logs in as the admin, creates a secret API key, makes EUR (default) and USD the
//       store's currencies, creates the region the tests' draft orders use, and prints
//       {"api_key", "store_id", "region_id", "sales_channel_id"} as JSON
//   node harness.js watchdog <pid> <stamp file> <idle seconds> <admin url> <database>
//       stops the server (its process group) once the stamp file is older than the idle
//       limit or the server is gone, then drops its database, then exits
//
// Invariant: nothing printed here holds the admin password; the API key is printed once, to
// the harness, which keeps it in the server's state file.
"use strict"

const fs = require("fs")
const { Client } = require("pg")

function quoteIdent(name) {
  return '"' + String(name).replace(/"/g, '""') + '"'
}

async function withAdmin(adminUrl, work) {
  const client = new Client({ connectionString: adminUrl })
  await client.connect()
  try {
    return await work(client)
  } finally {
    await client.end()
  }
}

async function call(base, method, path, token, body) {
  const headers = { "content-type": "application/json" }
  if (token) headers.authorization = token
  const response = await fetch(base + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  const text = await response.text()
  if (!response.ok) {
    throw new Error(`${method} ${path} answered ${response.status}: ${text.slice(0, 500)}`)
  }
  return text ? JSON.parse(text) : {}
}

async function setup(base, email, password) {
  const login = await call(base, "POST", "/auth/user/emailpass", null, { email, password })
  const bearer = "Bearer " + login.token
  const key = await call(base, "POST", "/admin/api-keys", bearer, {
    title: "lockstep tests",
    type: "secret",
  })
  const stores = await call(base, "GET", "/admin/stores", bearer)
  const store = stores.stores[0]
  await call(base, "POST", `/admin/stores/${store.id}`, bearer, {
    supported_currencies: [
      { currency_code: "eur", is_default: true },
      { currency_code: "usd" },
    ],
  })
  const region = await call(base, "POST", "/admin/regions", bearer, {
    name: "Lockstep tests (EUR)",
    currency_code: "eur",
    countries: ["de", "fr"],
  })
  process.stdout.write(
    JSON.stringify({
      api_key: key.api_key.token,
      store_id: store.id,
      region_id: region.region.id,
      sales_channel_id: store.default_sales_channel_id,
    }) + "\n"
  )
}

function alive(pid) {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

async function watchdog(pid, stamp, idleSeconds, adminUrl, database) {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
  for (;;) {
    await sleep(10000)
    if (!alive(pid)) break
    let age
    try {
      age = (Date.now() - fs.statSync(stamp).mtimeMs) / 1000
    } catch {
      age = idleSeconds + 1
    }
    if (age > idleSeconds) {
      try {
        process.kill(-pid, "SIGTERM")
      } catch {
        // The group is gone already.
      }
      for (let i = 0; i < 30 && alive(pid); i++) await sleep(1000)
      if (alive(pid)) {
        try {
          process.kill(-pid, "SIGKILL")
        } catch {
          // Gone meanwhile.
        }
      }
      break
    }
  }
  await sleep(2000)
  await withAdmin(adminUrl, (client) =>
    client.query(`DROP DATABASE IF EXISTS ${quoteIdent(database)} WITH (FORCE)`)
  )
}

async function main() {
  const [command, ...args] = process.argv.slice(2)
  switch (command) {
    case "create-db":
      await withAdmin(args[0], (client) => client.query(`CREATE DATABASE ${quoteIdent(args[1])}`))
      break
    case "drop-db":
      await withAdmin(args[0], (client) =>
        client.query(`DROP DATABASE IF EXISTS ${quoteIdent(args[1])} WITH (FORCE)`)
      )
      break
    case "setup":
      await setup(args[0], args[1], args[2])
      break
    case "watchdog":
      process.stdin.destroy()
      await watchdog(Number(args[0]), args[1], Number(args[2]), args[3], args[4])
      break
    default:
      throw new Error(`unknown command ${command}; see the head of harness.js`)
  }
}

main().catch((error) => {
  process.stderr.write(String(error && error.message ? error.message : error) + "\n")
  process.exit(1)
})
