//! The Medusa connector end to end, through the built `lockstep` binary against the shared
//! real Medusa v2 server (see `lockstep_test_support::medusa`; each test makes records of its
//! own and reads only those, through the connection's `filters`) and real PostgreSQL: the
//! catalog (products, variants with EUR prices, stock per location) from PostgreSQL into the
//! shop, with a price change and a deleted product following; the shop's customers and
//! orders (a draft order converted to an order) into PostgreSQL, with a cancellation
//! arriving later as an update; the shop's products mirrored into PostgreSQL, a product
//! deleted in the shop arriving as a tombstone; and the seed's example, Tryton's products
//! and prices (the ERP, a real `trytond`) into the shop's catalog, with a price change and a
//! delete made in Tryton following; and a wrong API key (an `auth` error at once, the key in
//! no output or history).

use std::path::Path;
use std::process::Command;

use lockstep_e2e::{counts, lockstep, pg_exec, pg_rows, postgres_database, run, run_report};
use lockstep_http_kit::auth::AuthScheme;
use lockstep_http_kit::{Auth, ClientConfig, HttpClient, Method, Request, SecretString};
use lockstep_test_support::medusa::{unique_name, MedusaServer};
use lockstep_test_support::skip::skip_or_fail;
use lockstep_test_support::tryton::ADMIN_PASSWORD as TRYTON_ADMIN_PASSWORD;
use serde_json::{json, Value};

use crate::tryton::{Erp, PASSWORD_VAR as TRYTON_PASSWORD_VAR};

/// The variable that carries the API key to the `lockstep` child processes only.
const KEY_VAR: &str = "LOCKSTEP_E2E_MEDUSA_API_KEY";

/// The shared server with an admin client for making and checking records.
struct Shop {
    server: MedusaServer,
    client: HttpClient,
    runtime: tokio::runtime::Runtime,
}

impl Shop {
    fn start() -> Option<Self> {
        let server = match MedusaServer::shared() {
            Ok(server) => server,
            Err(e) => {
                skip_or_fail(e);
                return None;
            }
        };
        let auth = Auth::with_secret(
            AuthScheme::BasicSecretAsUser,
            "api_key_env",
            KEY_VAR,
            SecretString::from(server.api_key.clone()),
        );
        let client = HttpClient::new(ClientConfig::new("Medusa", server.url(), auth)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Some(Self {
            server,
            client,
            runtime,
        })
    }

    fn send(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = Request::new(method, path.to_owned()).describe("e2e set-up");
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self
            .runtime
            .block_on(self.client.send(&request))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_slice(&response.body).unwrap_or(Value::Null)
    }

    fn get(&self, path: &str) -> Value {
        self.send(Method::GET, path, None)
    }

    /// The connection, as a config file's `[connections.shop]`, with `filters` (TOML lines
    /// of `[connections.shop.config.filters.<stream>]` tables).
    fn connection(&self, filters: &str) -> String {
        format!(
            "[connections.shop]\nconnector = \"medusa\"\n[connections.shop.config]\nurl = \"{}\"\n\
             api_key_env = \"{KEY_VAR}\"\n{filters}\n",
            self.server.url()
        )
    }

    /// A `lockstep` command with the key's variable set for the child only.
    fn lockstep(&self, dir: &Path) -> Command {
        let mut cmd = lockstep(dir);
        cmd.env(KEY_VAR, &self.server.api_key);
        cmd
    }

    fn run(&self, dir: &Path, sync: &str) -> Value {
        let (ok, report, stderr) =
            run_report(self.lockstep(dir).args(["run", sync, "--output", "json"]));
        assert!(ok, "{sync}: {report}\n{stderr}");
        assert!(
            !report.to_string().contains(&self.server.api_key)
                && !stderr.contains(&self.server.api_key),
            "the key leaked"
        );
        report
    }
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

#[test]
fn postgres_catalog_and_stock_reach_medusa_then_a_price_change_and_a_delete_follow() {
    let Some(db) = postgres_database("medusa_catalog") else {
        return;
    };
    let Some(shop) = Shop::start() else {
        return;
    };
    let p = unique_name("erp");
    let location = shop.send(
        Method::POST,
        "/admin/stock-locations",
        Some(json!({"name": format!("{p} warehouse")})),
    )["stock_location"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    pg_exec(
        &db.url,
        &[
            "CREATE TABLE products (handle text PRIMARY KEY, title text NOT NULL, \
             changed_at timestamptz NOT NULL DEFAULT now())",
            "CREATE TABLE variants (sku text PRIMARY KEY, product text NOT NULL, \
             price numeric(12,2), changed_at timestamptz NOT NULL DEFAULT now())",
            "CREATE TABLE stock (sku text, location text, quantity bigint, \
             PRIMARY KEY (sku, location))",
            &format!(
                "INSERT INTO products (handle, title) VALUES \
                 ('{p}-mug', '{p} Mug'), ('{p}-cap', '{p} Cap')"
            ),
            &format!(
                "INSERT INTO variants (sku, product, price) VALUES \
                 ('{p}-mug-1', '{p}-mug', 12.50), ('{p}-cap-1', '{p}-cap', 20.00)"
            ),
            &format!(
                "INSERT INTO stock VALUES ('{p}-mug-1', '{location}', 40), \
                 ('{p}-cap-1', '{location}', 3)"
            ),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = format!(
        r#"
[state]
url = "sqlite://state.db"
{shop}
[connections.pg]
connector = "postgres"
config = {{ url = "{db_url}" }}

[syncs.products]
source = "pg.products"
destination = "shop.products"
mode = "mirror"
key = ["handle"]
max_delete_fraction = 0.5
[syncs.products.fields]
handle = "handle"
title = "title"
status = {{ constant = "published" }}

[syncs.variants]
source = "pg.variants"
destination = "shop.product_variants"
mode = "incremental"
cursor = "changed_at"
key = ["sku"]
[syncs.variants.fields]
sku = "sku"
product_handle = "product"
price_eur = "price"

[syncs.stock]
source = "pg.stock"
destination = "shop.inventory_levels"
key = ["sku", "location_id"]
[syncs.stock.fields]
sku = "sku"
location_id = "location"
stocked_quantity = "quantity"
"#,
        shop = shop.connection(&format!(
            "[connections.shop.config.filters.products]\nq = \"{p}\""
        )),
        db_url = db.url
    );
    std::fs::write(d.join("lockstep.toml"), text).unwrap();

    assert_eq!(counts(&shop.run(d, "products")), [2, 2, 0, 0, 0]);
    assert_eq!(counts(&shop.run(d, "variants")), [2, 2, 0, 0, 0]);
    assert_eq!(counts(&shop.run(d, "stock")), [2, 2, 0, 0, 0]);
    let prices = |sku: &str| -> Vec<(String, f64)> {
        let answer = shop.get(&format!(
            "/admin/product-variants?sku={sku}&fields=id,sku,prices.amount,prices.currency_code"
        ));
        answer["variants"][0]["prices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["currency_code"].as_str().unwrap().to_owned(),
                    p["amount"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(prices(&format!("{p}-mug-1")), [("eur".to_owned(), 12.5)]);
    let levels = shop.get(&format!(
        "/admin/inventory-items?sku={p}-cap-1&fields=id,sku,location_levels.*"
    ));
    assert_eq!(
        levels["inventory_items"][0]["location_levels"][0]["stocked_quantity"],
        json!(3),
        "{levels}"
    );

    // In the ERP: the mug's price changes, the cap is discontinued.
    pg_exec(
        &db.url,
        &[
            &format!(
                "UPDATE variants SET price = 11.90, changed_at = now() + interval '1 second' \
                 WHERE sku = '{p}-mug-1'"
            ),
            &format!("DELETE FROM variants WHERE product = '{p}-cap'"),
            &format!("DELETE FROM products WHERE handle = '{p}-cap'"),
        ],
    );
    assert_eq!(counts(&shop.run(d, "variants")), [1, 0, 1, 0, 0]);
    assert_eq!(prices(&format!("{p}-mug-1")), [("eur".to_owned(), 11.9)]);
    assert_eq!(counts(&shop.run(d, "products")), [1, 0, 0, 1, 1]);
    let products = shop.get(&format!("/admin/products?q={p}&fields=handle"));
    assert_eq!(
        products["products"],
        json!([{"id": products["products"][0]["id"], "handle": format!("{p}-mug")}]),
        "the cap is deleted in the shop"
    );
    let tombstone = shop.get(&format!(
        "/admin/products?handle={p}-cap&with_deleted=true&fields=handle,deleted_at"
    ));
    assert!(
        tombstone["products"][0]["deleted_at"].is_string(),
        "{tombstone}"
    );
}

#[test]
fn medusa_customers_and_orders_reach_postgres_and_a_cancel_arrives_as_an_update() {
    let Some(db) = postgres_database("medusa_orders") else {
        return;
    };
    let Some(shop) = Shop::start() else {
        return;
    };
    let p = unique_name("shop");
    let product = shop.send(
        Method::POST,
        "/admin/products",
        Some(json!({
            "title": format!("{p} Tea"), "handle": format!("{p}-tea"), "status": "published",
            "options": [{"title": "Size", "values": ["250 g"]}],
            "variants": [{"title": "250 g", "sku": format!("{p}-tea-250"), "options": {"Size": "250 g"},
                          "manage_inventory": false,
                          "prices": [{"currency_code": "eur", "amount": 7.25}]}],
        })),
    );
    let variant = product["product"]["variants"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let email = format!("{p}@example.com");
    let customer = shop.send(
        Method::POST,
        "/admin/customers",
        Some(json!({"email": email, "first_name": "Ann", "last_name": "Lee"})),
    )["customer"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let draft = shop.send(
        Method::POST,
        "/admin/draft-orders",
        Some(json!({
            "region_id": shop.server.region_id, "customer_id": customer, "email": email,
            "items": [{"variant_id": variant, "quantity": 2}],
        })),
    );
    let order = draft["draft_order"]["id"].as_str().unwrap().to_owned();
    shop.send(
        Method::POST,
        &format!("/admin/draft-orders/{order}/convert-to-order"),
        None,
    );

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = format!(
        r#"
[state]
url = "sqlite://state.db"
{shop}
[connections.pg]
connector = "postgres"
config = {{ url = "{db_url}" }}

[syncs.customers]
source = "shop.customers"
destination = "pg.shop_customers"
mode = "incremental"
cursor = "updated_at"
key = ["medusa_id"]
[syncs.customers.fields]
medusa_id = "id"
email = "email"
first_name = "first_name"
last_name = "last_name"

[syncs.orders]
source = "shop.orders"
destination = "pg.shop_orders"
mode = "incremental"
cursor = "updated_at"
key = ["medusa_id"]
[syncs.orders.fields]
medusa_id = "id"
display_id = "display_id"
customer_id = "customer_id"
status = "status"
total = "total"
currency = "currency_code"
items = "items"
"#,
        shop = shop.connection(&format!(
            "[connections.shop.config.filters.customers]\nq = \"{p}\"\n\
             [connections.shop.config.filters.orders]\ncustomer_id = \"{customer}\""
        )),
        db_url = db.url
    );
    std::fs::write(d.join("lockstep.toml"), text).unwrap();

    assert_eq!(counts(&shop.run(d, "customers")), [1, 1, 0, 0, 0]);
    assert_eq!(counts(&shop.run(d, "orders")), [1, 1, 0, 0, 0]);
    assert_eq!(
        pg_rows(
            &db.url,
            "SELECT medusa_id, email, first_name FROM shop_customers"
        ),
        [vec![s(&customer), s(&email), s("Ann")]]
    );
    assert_eq!(
        pg_rows(
            &db.url,
            "SELECT medusa_id, customer_id, status, total::text, currency, \
             items->0->>'sku', items->0->>'quantity' FROM shop_orders"
        ),
        [vec![
            s(&order),
            s(&customer),
            s("pending"),
            s("14.500000"),
            s("eur"),
            Some(format!("{p}-tea-250")),
            s("2"),
        ]]
    );

    // Nothing changed: nothing arrives.
    assert_eq!(counts(&shop.run(d, "orders")), [0, 0, 0, 0, 0]);

    // Cancelled in the shop: the order arrives again, as an update.
    shop.send(Method::POST, &format!("/admin/orders/{order}/cancel"), None);
    assert_eq!(counts(&shop.run(d, "orders")), [1, 0, 1, 0, 0]);
    assert_eq!(
        pg_rows(&db.url, "SELECT status FROM shop_orders"),
        [vec![s("canceled")]]
    );
}

#[test]
fn tryton_products_and_prices_reach_the_medusa_catalog_then_a_price_change_and_a_delete_follow() {
    let Some(shop) = Shop::start() else {
        return;
    };
    let Some(erp) = Erp::start() else {
        return;
    };
    let p = unique_name("tryton");
    let decimal = |d: &str| json!({"__class__": "Decimal", "decimal": d});
    let templates = erp.create(
        "product.template",
        json!([
            {"name": format!("{p} Kettle"), "code": format!("{p}-kettle"), "default_uom": 1,
             "list_price": decimal("39.9000")},
            {"name": format!("{p} Teapot"), "code": format!("{p}-teapot"), "default_uom": 1,
             "list_price": decimal("24.5000")},
        ]),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = format!(
        r#"
[state]
url = "sqlite://state.db"
{erp}
{shop}
[syncs.catalog]
source = "erp.product.template"
destination = "shop.products"
mode = "mirror"
key = ["handle"]
max_delete_fraction = 0.5
[syncs.catalog.fields]
handle = "code"
title = "name"
external_id = {{ expr = "cast(id, 'text')" }}
status = {{ constant = "published" }}

[syncs.prices]
source = "erp.product.template"
destination = "shop.product_variants"
key = ["sku"]
[syncs.prices.fields]
sku = "code"
product_handle = "code"
title = "name"
price_eur = "list_price"
"#,
        erp = erp.connection(
            "models = [\"product.template\"]\nfields = { \"product.template\" = [\"name\", \"code\", \"list_price\"] }"
        ),
        shop = shop.connection(&format!(
            "[connections.shop.config.filters.products]\nq = \"{p}\"\n\
             [connections.shop.config.filters.product_variants]\nq = \"{p}\""
        )),
    );
    std::fs::write(d.join("lockstep.toml"), text).unwrap();
    let run = |sync: &str| {
        let (ok, report, stderr) = run_report(
            shop.lockstep(d)
                .env(TRYTON_PASSWORD_VAR, TRYTON_ADMIN_PASSWORD)
                .args(["run", sync, "--output", "json"]),
        );
        assert!(ok, "{sync}: {report}\n{stderr}");
        report
    };
    let price = |sku: &str| -> Vec<(String, f64)> {
        let answer = shop.get(&format!(
            "/admin/product-variants?sku={sku}&fields=sku,prices.amount,prices.currency_code"
        ));
        answer["variants"][0]["prices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["currency_code"].as_str().unwrap().to_owned(),
                    p["amount"].as_f64().unwrap(),
                )
            })
            .collect()
    };

    assert_eq!(counts(&run("catalog")), [2, 2, 0, 0, 0]);
    assert_eq!(counts(&run("prices")), [2, 2, 0, 0, 0]);
    let kettle = format!("{p}-kettle");
    assert_eq!(price(&kettle), [("eur".to_owned(), 39.9)]);
    let products = shop.get(&format!(
        "/admin/products?handle={kettle}&fields=external_id,title"
    ));
    assert_eq!(
        products["products"][0]["external_id"],
        json!(templates[0].to_string())
    );

    // In Tryton: the kettle's price changes, the teapot is deleted.
    erp.call(
        "model.product.template.write",
        vec![
            json!([templates[0]]),
            json!({"list_price": decimal("35.0000")}),
        ],
    );
    erp.call("model.product.template.delete", vec![json!([templates[1]])]);
    assert_eq!(counts(&run("prices")), [1, 0, 1, 0, 0]);
    assert_eq!(price(&kettle), [("eur".to_owned(), 35.0)]);
    assert_eq!(counts(&run("catalog")), [1, 0, 0, 1, 1]);
    let left = shop.get(&format!("/admin/products?q={p}&fields=handle"));
    assert_eq!(left["count"], json!(1), "{left}");
    assert_eq!(left["products"][0]["handle"], json!(kettle));
}

#[test]
fn medusa_products_mirror_into_postgres_and_a_deleted_product_arrives_as_a_tombstone() {
    let Some(db) = postgres_database("medusa_products") else {
        return;
    };
    let Some(shop) = Shop::start() else {
        return;
    };
    let p = unique_name("mirror");
    let mut ids = Vec::new();
    for name in ["lamp", "desk", "chair"] {
        let created = shop.send(
            Method::POST,
            "/admin/products",
            Some(json!({
                "title": format!("{p} {name}"), "handle": format!("{p}-{name}"),
                "options": [{"title": "Default option", "values": ["Default option value"]}],
            })),
        );
        ids.push(created["product"]["id"].as_str().unwrap().to_owned());
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = format!(
        r#"
[state]
url = "sqlite://state.db"
{shop}
[connections.pg]
connector = "postgres"
config = {{ url = "{db_url}" }}

[syncs.products]
source = "shop.products"
destination = "pg.shop_products"
mode = "mirror"
cursor = "updated_at"
tombstone = "deleted_at"
reconcile_every = 0
key = ["medusa_id"]
max_delete_fraction = 0.5
[syncs.products.fields]
medusa_id = "id"
handle = "handle"
title = "title"
"#,
        shop = shop.connection(&format!(
            "[connections.shop.config.filters.products]\nq = \"{p}\""
        )),
        db_url = db.url
    );
    std::fs::write(d.join("lockstep.toml"), text).unwrap();
    assert_eq!(counts(&shop.run(d, "products")), [3, 3, 0, 0, 0]);

    // In the shop: the desk is deleted, the chair renamed.
    shop.send(Method::DELETE, &format!("/admin/products/{}", ids[1]), None);
    shop.send(
        Method::POST,
        &format!("/admin/products/{}", ids[2]),
        Some(json!({"title": format!("{p} armchair")})),
    );
    // Without reconciliation, the delete can only come from the tombstone.
    assert_eq!(counts(&shop.run(d, "products")), [2, 0, 1, 0, 1]);
    assert_eq!(
        pg_rows(
            &db.url,
            "SELECT medusa_id, title FROM shop_products ORDER BY medusa_id"
        ),
        [
            vec![s(&ids[0]), Some(format!("{p} lamp"))],
            vec![s(&ids[2]), Some(format!("{p} armchair"))],
        ]
    );
    assert_eq!(counts(&shop.run(d, "products")), [0, 0, 0, 0, 0]);
}

#[test]
fn a_wrong_api_key_fails_at_once_naming_the_setting_and_never_showing_the_key() {
    let Some(db) = postgres_database("medusa_auth") else {
        return;
    };
    let Some(shop) = Shop::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = format!(
        r#"
[state]
url = "sqlite://state.db"
{shop}
[connections.pg]
connector = "postgres"
config = {{ url = "{db_url}" }}

[syncs.customers]
source = "shop.customers"
destination = "pg.shop_customers"
key = ["id"]
"#,
        shop = shop.connection(""),
        db_url = db.url
    );
    std::fs::write(d.join("lockstep.toml"), text).unwrap();
    let wrong = "sk_wrong-medusa-key-5e81c0";
    let with_wrong_key = || {
        let mut cmd = lockstep(d);
        cmd.env(KEY_VAR, wrong);
        cmd
    };
    let (out, stdout, stderr) =
        run(with_wrong_key().args(["run", "customers", "--output", "json"]));
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    assert_eq!(report["error"]["kind"], "auth", "{report}");
    let message = report["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("api_key_env") && message.contains(KEY_VAR),
        "the message names the setting and the variable: {message}"
    );
    // Every request logged: one attempt, no retry, and no key.
    let (_, text_out, text_err) = run(with_wrong_key()
        .env("LOCKSTEP_LOG", "debug")
        .args(["run", "customers"]));
    assert!(
        text_err.contains("401"),
        "Medusa's 401 is named: {text_err}"
    );
    assert!(!text_err.contains("retrying"), "{text_err}");
    let (_, history, _) = run(with_wrong_key().args(["runs", "customers", "--output", "json"]));
    for text in [&stdout, &stderr, &text_out, &text_err, &history] {
        assert!(!text.contains(wrong), "the key leaked: {text}");
        assert!(
            !text.contains(&shop.server.api_key),
            "the right key leaked: {text}"
        );
    }
}
