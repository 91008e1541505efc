//! The Medusa connector against a real Medusa v2 server (the test-support harness starts one
//! for the whole suite; each test works with records of its own, found by a unique prefix
//! through the `q` filter): incremental reads with several records sharing an `updated_at`
//! across page boundaries, product tombstones, product, variant and category writes, a
//! duplicate SKU and an invalid product as exactly one reject each with Medusa's message,
//! stock levels per location, a wrong API key, and the conformance kit.

use std::sync::Once;
use std::time::{Duration, Instant};

use lockstep_connector_medusa::{Medusa, MedusaConfig};
use lockstep_http_kit::{Method, Request, RetryPolicy};
use lockstep_plugin_sdk::api::ErrorKind;
use lockstep_plugin_sdk::rows::{batch_from_rows, rows_from_batch};
use lockstep_plugin_sdk::{
    BatchReader, DataType, FieldInfo, OpenStreamRequest, ReadMode, ReadRequest, StreamWriter,
};
use lockstep_test_support::medusa::{unique_name, MedusaServer};
use lockstep_test_support::skip::skip_or_fail;
use serde_json::{json, Map, Value};

const KEY_VAR: &str = "LOCKSTEP_MEDUSA_TEST_API_KEY";
const WRONG_VAR: &str = "LOCKSTEP_MEDUSA_TEST_WRONG_KEY";
const WRONG_KEY: &str = "sk_not-the-key-0c41f7a2";

type Row = Map<String, Value>;

fn server() -> Option<MedusaServer> {
    let started = Instant::now();
    let server = match MedusaServer::shared() {
        Ok(server) => server,
        Err(e) => {
            skip_or_fail(e);
            return None;
        }
    };
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var(KEY_VAR, &server.api_key);
        std::env::set_var(WRONG_VAR, WRONG_KEY);
    });
    eprintln!(
        "medusa server ready for the test in {:.1} s (set-up timings: {:?})",
        started.elapsed().as_secs_f64(),
        server.timings
    );
    Some(server)
}

fn config_json(server: &MedusaServer, extra: Value) -> Value {
    let mut config = json!({"url": server.url(), "api_key_env": KEY_VAR});
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    config
}

fn connect(server: &MedusaServer, extra: Value) -> Medusa {
    let config: MedusaConfig = serde_json::from_value(config_json(server, extra)).unwrap();
    Medusa::connect(config).unwrap()
}

/// Calls the admin API with the connector's own client (test set-up).
async fn call(medusa: &Medusa, method: Method, path: &str, body: Option<Value>) -> Value {
    let mut request = Request::new(method, path).describe("test set-up");
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = medusa
        .client()
        .send(&request)
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_slice(&response.body).unwrap_or(Value::Null)
}

/// Gives every variant whose SKU starts with `prefix` the same `updated_at`, to the
/// millisecond, in the server's database.
async fn share_updated_at(server: &MedusaServer, prefix: &str) {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&server.database_url())
        .await
        .expect("Medusa's database");
    let updated = sqlx::query(
        "UPDATE product_variant SET updated_at = shared.at
         FROM (SELECT date_trunc('milliseconds', max(updated_at)) AS at
               FROM product_variant WHERE sku LIKE $1 || '-%') AS shared
         WHERE sku LIKE $1 || '-%'",
    )
    .bind(prefix)
    .execute(&mut db)
    .await
    .expect("updating the variants' updated_at")
    .rows_affected();
    assert_eq!(updated, 7, "the test's variants");
}

/// A product with `variants` (sku, EUR price), created in one request.
async fn product(medusa: &Medusa, handle: &str, variants: &[(&str, f64)]) -> Value {
    let values: Vec<String> = variants.iter().map(|(sku, _)| sku.to_string()).collect();
    let body = json!({
        "title": handle,
        "handle": handle,
        "status": "published",
        "options": [{"title": "Size", "values": values}],
        "variants": variants.iter().map(|(sku, price)| json!({
            "title": sku, "sku": sku, "options": {"Size": sku},
            "prices": [{"currency_code": "eur", "amount": price}],
        })).collect::<Vec<_>>(),
    });
    call(medusa, Method::POST, "/admin/products", Some(body)).await["product"].clone()
}

fn read_request(
    stream: &str,
    mode: ReadMode,
    checkpoint: Option<Value>,
    batch: usize,
) -> ReadRequest {
    ReadRequest {
        stream: stream.into(),
        mode,
        cursor_field: (mode == ReadMode::Incremental).then(|| "updated_at".into()),
        checkpoint,
        batch_size: Some(batch),
        ..ReadRequest::default()
    }
}

/// Reads to the end: the rows, the batch sizes and the last checkpoint.
async fn read_all(medusa: &Medusa, request: ReadRequest) -> (Vec<Row>, Vec<usize>, Option<Value>) {
    let limit = request.batch_size.unwrap_or(usize::MAX);
    let mut reader = medusa.start_read(request).await.unwrap();
    let mut rows = Vec::new();
    let mut sizes = Vec::new();
    let mut checkpoint = None;
    while let Some((batch, cp)) = reader
        .next_batch()
        .await
        .unwrap_or_else(|e| panic!("{}", e.message))
    {
        assert!(
            batch.num_rows() <= limit,
            "a batch of {} rows",
            batch.num_rows()
        );
        sizes.push(batch.num_rows());
        rows.extend(rows_from_batch(&batch));
        checkpoint = Some(cp);
    }
    (rows, sizes, checkpoint)
}

fn column(rows: &[Row], name: &str) -> Vec<String> {
    rows.iter()
        .map(|r| r[name].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn variants_sharing_an_updated_at_are_read_across_page_boundaries_once_each() {
    let Some(server) = server() else { return };
    let started = Instant::now();
    let prefix = unique_name("ties");
    let medusa = connect(
        &server,
        json!({"filters": {"product_variants": {"q": prefix}}}),
    );
    let skus: Vec<String> = (0..7).map(|i| format!("{prefix}-{i}")).collect();
    let variants: Vec<(&str, f64)> = skus.iter().map(|s| (s.as_str(), 10.5)).collect();
    let created = product(&medusa, &prefix, &variants).await;
    // Medusa stamps the variants of one request within the same few milliseconds, but on a
    // loaded machine not always within one: the tie is made exact in Medusa's own database.
    share_updated_at(&server, &prefix).await;
    let product_id = created["id"].as_str().unwrap();
    let fetched = call(
        &medusa,
        Method::GET,
        &format!("/admin/products/{product_id}"),
        None,
    )
    .await;
    let stamps: Vec<&str> = fetched["product"]["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["updated_at"].as_str().unwrap())
        .collect();
    assert_eq!(stamps.len(), 7, "{fetched}");
    assert!(
        stamps.windows(2).all(|w| w[0] == w[1]),
        "the variants share their updated_at: {stamps:?}"
    );

    // Seven records in one millisecond, three a batch: every boundary is a tie.
    let (rows, sizes, checkpoint) = read_all(
        &medusa,
        read_request("product_variants", ReadMode::Incremental, None, 3),
    )
    .await;
    let mut read_skus = column(&rows, "sku");
    read_skus.sort();
    assert_eq!(read_skus, skus, "each variant exactly once");
    assert_eq!(sizes.iter().sum::<usize>(), 7, "{sizes:?}");
    assert_eq!(rows[0]["price_eur"], json!("10.500000"));
    assert_eq!(
        rows[0]["options"]["Size"]
            .as_str()
            .map(|s| s.starts_with(&prefix)),
        Some(true)
    );
    assert_eq!(rows[0]["product_handle"], json!(prefix));
    let catalog = medusa.catalog().await.unwrap();
    let variant_stream = catalog
        .streams
        .iter()
        .find(|s| s.name == "product_variants")
        .unwrap();
    assert_eq!(
        variant_stream.field("price_usd").unwrap().data_type,
        DataType::Decimal {
            precision: 24,
            scale: 6
        },
        "one price column per store currency"
    );

    // Nothing changed: nothing read again.
    let (again, _, _) = read_all(
        &medusa,
        read_request(
            "product_variants",
            ReadMode::Incremental,
            checkpoint.clone(),
            3,
        ),
    )
    .await;
    assert_eq!(again.len(), 0, "{again:?}");

    // Resuming in the middle of the tie delivers the rest, without repeats.
    let mut reader = medusa
        .start_read(read_request(
            "product_variants",
            ReadMode::Incremental,
            None,
            3,
        ))
        .await
        .unwrap();
    let (first, middle) = reader.next_batch().await.unwrap().unwrap();
    let first_skus = column(&rows_from_batch(&first), "sku");
    let (rest, _, _) = read_all(
        &medusa,
        read_request("product_variants", ReadMode::Incremental, Some(middle), 3),
    )
    .await;
    let mut all = first_skus.clone();
    all.extend(column(&rest, "sku"));
    all.sort();
    assert_eq!(all, skus, "first batch {first_skus:?} then the rest");

    // A price change bumps the variant: it alone arrives, with its new price.
    let product_id = created["id"].as_str().unwrap();
    let changed = created["variants"][4]["id"].as_str().unwrap();
    call(
        &medusa,
        Method::POST,
        &format!("/admin/products/{product_id}/variants/{changed}"),
        Some(json!({"prices": [{"currency_code": "eur", "amount": 11.25}, {"currency_code": "usd", "amount": 13}]})),
    )
    .await;
    let (changes, _, _) = read_all(
        &medusa,
        read_request("product_variants", ReadMode::Incremental, checkpoint, 3),
    )
    .await;
    assert_eq!(column(&changes, "id"), [changed]);
    assert_eq!(changes[0]["price_eur"], json!("11.250000"));
    assert_eq!(changes[0]["price_usd"], json!("13.000000"));
    eprintln!("test took {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test]
async fn a_deleted_product_arrives_as_a_tombstone_and_full_reads_leave_it_out() {
    let Some(server) = server() else { return };
    let started = Instant::now();
    let prefix = unique_name("tomb");
    let medusa = connect(&server, json!({"filters": {"products": {"q": prefix}}}));
    let mut ids = Vec::new();
    for i in 0..4 {
        let p = product(
            &medusa,
            &format!("{prefix}-{i}"),
            &[(&format!("{prefix}-sku-{i}"), 5.0)],
        )
        .await;
        ids.push(p["id"].as_str().unwrap().to_owned());
    }
    let (rows, _, checkpoint) = read_all(
        &medusa,
        read_request("products", ReadMode::Incremental, None, 2),
    )
    .await;
    assert_eq!(column(&rows, "id"), ids, "in the order they were made");
    assert!(rows.iter().all(|r| r["deleted_at"].is_null()));
    assert_eq!(
        rows[0]["options"],
        json!([{"title": "Size", "values": [format!("{prefix}-sku-0")]}])
    );

    call(
        &medusa,
        Method::DELETE,
        &format!("/admin/products/{}", ids[1]),
        None,
    )
    .await;
    call(
        &medusa,
        Method::POST,
        &format!("/admin/products/{}", ids[3]),
        Some(json!({"subtitle": "changed"})),
    )
    .await;
    let (changes, _, _) = read_all(
        &medusa,
        read_request("products", ReadMode::Incremental, checkpoint, 2),
    )
    .await;
    assert_eq!(column(&changes, "id"), [ids[1].clone(), ids[3].clone()]);
    assert!(
        changes[0]["deleted_at"].is_string(),
        "the tombstone: {:?}",
        changes[0]
    );
    assert!(changes[1]["deleted_at"].is_null());
    assert_eq!(changes[1]["subtitle"], json!("changed"));

    let (full, _, _) = read_all(&medusa, read_request("products", ReadMode::Full, None, 2)).await;
    let mut expected = vec![ids[0].clone(), ids[2].clone(), ids[3].clone()];
    expected.sort();
    assert_eq!(
        column(&full, "id"),
        expected,
        "by id, without the deleted one"
    );
    eprintln!("test took {:.1} s", started.elapsed().as_secs_f64());
}

fn fields(names: &[(&str, DataType)]) -> Vec<FieldInfo> {
    names
        .iter()
        .map(|(name, data_type)| FieldInfo {
            name: (*name).into(),
            data_type: *data_type,
            nullable: true,
            native_type: None,
        })
        .collect()
}

fn batch_of(
    fields: &[FieldInfo],
    rows: Vec<Value>,
) -> lockstep_plugin_sdk::arrow::array::RecordBatch {
    let rows: Vec<Row> = rows
        .into_iter()
        .map(|r| r.as_object().unwrap().clone())
        .collect();
    batch_from_rows(fields, &rows).unwrap()
}

#[tokio::test]
async fn products_and_variants_are_written_and_a_sku_of_another_product_is_exactly_one_reject() {
    let Some(server) = server() else { return };
    let started = Instant::now();
    let prefix = unique_name("write");
    let medusa = connect(
        &server,
        json!({"filters": {"products": {"q": prefix}, "product_variants": {"q": prefix}}}),
    );
    let category = call(
        &medusa,
        Method::POST,
        "/admin/product-categories",
        Some(json!({"name": format!("{prefix} shirts"), "handle": format!("{prefix}-shirts")})),
    )
    .await["product_category"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let existing = product(
        &medusa,
        &format!("{prefix}-old"),
        &[(&format!("{prefix}-taken"), 1.0)],
    )
    .await;

    // Products by handle: two new, with a category.
    let product_fields = fields(&[
        ("handle", DataType::Text),
        ("title", DataType::Text),
        ("status", DataType::Text),
        ("category_ids", DataType::Json),
    ]);
    let mut writer = medusa
        .start_write(OpenStreamRequest {
            stream: "products".into(),
            fields: product_fields.clone(),
            key: vec!["handle".into()],
            create_if_missing: false,
            schema_evolution: Default::default(),
        })
        .await
        .unwrap();
    let outcome = writer
        .upsert(batch_of(
            &product_fields,
            vec![
                json!({"handle": format!("{prefix}-a"), "title": format!("{prefix} A"), "status": "published", "category_ids": [category]}),
                json!({"handle": format!("{prefix}-b"), "title": format!("{prefix} B"), "status": "published", "category_ids": []}),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(
        (outcome.inserted, outcome.rejected.len()),
        (Some(2), 0),
        "{outcome:?}"
    );

    // Variants by SKU under those products: one SKU is taken by another product.
    let variant_fields = fields(&[
        ("sku", DataType::Text),
        ("product_handle", DataType::Text),
        ("title", DataType::Text),
        (
            "price_eur",
            DataType::Decimal {
                precision: 12,
                scale: 2,
            },
        ),
        (
            "price_usd",
            DataType::Decimal {
                precision: 12,
                scale: 2,
            },
        ),
    ]);
    let mut variants = medusa
        .start_write(OpenStreamRequest {
            stream: "product_variants".into(),
            fields: variant_fields.clone(),
            key: vec!["sku".into()],
            create_if_missing: false,
            schema_evolution: Default::default(),
        })
        .await
        .unwrap();
    let taken = format!("{prefix}-taken");
    let outcome = variants
        .upsert(batch_of(
            &variant_fields,
            vec![
                json!({"sku": format!("{prefix}-a1"), "product_handle": format!("{prefix}-a"), "title": "A", "price_eur": "19.99", "price_usd": "21.50"}),
                json!({"sku": format!("{prefix}-b1"), "product_handle": format!("{prefix}-b"), "title": "B", "price_eur": "5.00", "price_usd": null}),
                json!({"sku": taken.clone(), "product_handle": format!("{prefix}-b"), "title": "dup", "price_eur": "1.00", "price_usd": null}),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(outcome.rejected.len(), 1, "{outcome:?}");
    // The duplicate SKU is an update of the existing variant, which is another product's:
    // Medusa's variants cannot move.
    assert_eq!(outcome.rejected[0].row, 2);
    assert!(
        outcome.rejected[0].reason.contains("cannot move"),
        "{:?}",
        outcome.rejected
    );
    assert_eq!(outcome.inserted, Some(2), "{outcome:?}");
    assert_eq!(existing["variants"][0]["sku"], json!(taken));

    // Products updated by handle (Medusa's default option stays when none is written).
    let with_variant = fields(&[
        ("handle", DataType::Text),
        ("title", DataType::Text),
        ("options", DataType::Json),
    ]);
    let mut writer = medusa
        .start_write(OpenStreamRequest {
            stream: "products".into(),
            fields: with_variant.clone(),
            key: vec!["handle".into()],
            create_if_missing: false,
            schema_evolution: Default::default(),
        })
        .await
        .unwrap();
    let outcome = writer
        .upsert(batch_of(
            &with_variant,
            vec![
                json!({"handle": format!("{prefix}-a"), "title": format!("{prefix} A renamed"), "options": null}),
                json!({"handle": format!("{prefix}-old"), "title": format!("{prefix} old renamed"), "options": null}),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(
        (outcome.updated, outcome.rejected.len()),
        (Some(2), 0),
        "{outcome:?}"
    );
    let outcome = variants
        .upsert(batch_of(
            &variant_fields,
            vec![json!({"sku": format!("{prefix}-a1"), "product_handle": null, "title": "A", "price_eur": "18.00", "price_usd": null})],
        ))
        .await
        .unwrap();
    assert_eq!(outcome.updated, Some(1), "{outcome:?}");

    let (rows, _, _) = read_all(
        &medusa,
        read_request("product_variants", ReadMode::Full, None, 10),
    )
    .await;
    let a1 = rows
        .iter()
        .find(|r| r["sku"] == json!(format!("{prefix}-a1")))
        .unwrap();
    assert_eq!(a1["price_eur"], json!("18.000000"), "{a1:?}");
    assert_eq!(
        a1["price_usd"],
        Value::Null,
        "a null price removes that currency's price"
    );
    let (products, _, _) =
        read_all(&medusa, read_request("products", ReadMode::Full, None, 10)).await;
    let a = products
        .iter()
        .find(|r| r["handle"] == json!(format!("{prefix}-a")))
        .unwrap();
    assert_eq!(a["title"], json!(format!("{prefix} A renamed")));
    assert_eq!(a["category_ids"], json!([category]));
    eprintln!("test took {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test]
async fn a_duplicate_sku_is_exactly_one_reject_with_medusas_message() {
    let Some(server) = server() else { return };
    let started = Instant::now();
    let prefix = unique_name("dupsku");
    let medusa = connect(
        &server,
        json!({"filters": {"product_variants": {"q": prefix}}}),
    );
    for name in ["x", "y"] {
        call(
            &medusa,
            Method::POST,
            "/admin/products",
            Some(json!({
                "title": format!("{prefix} {name}"), "handle": format!("{prefix}-{name}"),
                "options": [{"title": "Size", "values": ["S", "M"]}],
            })),
        )
        .await;
    }
    let variant_fields = fields(&[
        ("sku", DataType::Text),
        ("product_handle", DataType::Text),
        ("options", DataType::Json),
        (
            "price_eur",
            DataType::Decimal {
                precision: 12,
                scale: 2,
            },
        ),
    ]);
    let mut writer = medusa
        .start_write(OpenStreamRequest {
            stream: "product_variants".into(),
            fields: variant_fields.clone(),
            key: vec!["sku".into()],
            create_if_missing: false,
            schema_evolution: Default::default(),
        })
        .await
        .unwrap();
    // The same new SKU twice in one batch, under two products: the first is created, Medusa
    // refuses the second.
    let dup = format!("{prefix}-dup");
    let outcome = writer
        .upsert(batch_of(
            &variant_fields,
            vec![
                json!({"sku": format!("{prefix}-ok"), "product_handle": format!("{prefix}-x"), "options": {"Size": "M"}, "price_eur": "3.00"}),
                json!({"sku": dup, "product_handle": format!("{prefix}-x"), "options": {"Size": "S"}, "price_eur": "4.00"}),
                json!({"sku": dup, "product_handle": format!("{prefix}-y"), "options": {"Size": "S"}, "price_eur": "5.00"}),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(outcome.inserted, Some(2), "{outcome:?}");
    assert_eq!(outcome.rejected.len(), 1, "{outcome:?}");
    assert_eq!(outcome.rejected[0].row, 2);
    assert!(
        outcome.rejected[0]
            .reason
            .contains(&format!("sku: {dup}, already exists")),
        "Medusa's own message: {:?}",
        outcome.rejected[0]
    );
    let (rows, _, _) = read_all(
        &medusa,
        read_request("product_variants", ReadMode::Full, None, 10),
    )
    .await;
    let mut found: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["sku"].as_str().unwrap().to_owned(),
                r["product_handle"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            (dup.clone(), format!("{prefix}-x")),
            (format!("{prefix}-ok"), format!("{prefix}-x"))
        ]
    );
    eprintln!("test took {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test]
async fn categories_are_written_by_handle_and_read_incrementally() {
    let Some(server) = server() else { return };
    let started = Instant::now();
    let prefix = unique_name("cat");
    let medusa = connect(
        &server,
        json!({"filters": {"product_categories": {"q": prefix}}}),
    );
    let category_fields = fields(&[
        ("handle", DataType::Text),
        ("name", DataType::Text),
        ("external_id", DataType::Text),
        ("is_active", DataType::Boolean),
    ]);
    let mut writer = medusa
        .start_write(OpenStreamRequest {
            stream: "product_categories".into(),
            fields: category_fields.clone(),
            key: vec!["handle".into()],
            create_if_missing: false,
            schema_evolution: Default::default(),
        })
        .await
        .unwrap();
    let row = |handle: &str, name: &str, erp: &str| json!({"handle": format!("{prefix}-{handle}"), "name": format!("{prefix} {name}"), "external_id": erp, "is_active": true});
    let outcome = writer
        .upsert(batch_of(
            &category_fields,
            vec![row("tea", "Tea", "10"), row("coffee", "Coffee", "11")],
        ))
        .await
        .unwrap();
    assert_eq!(outcome.inserted, Some(2), "{outcome:?}");
    let (rows, _, checkpoint) = read_all(
        &medusa,
        read_request("product_categories", ReadMode::Incremental, None, 5),
    )
    .await;
    let mut read: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["handle"].as_str().unwrap().to_owned(),
                r["external_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    read.sort();
    assert_eq!(
        read,
        [
            (format!("{prefix}-coffee"), "11".to_owned()),
            (format!("{prefix}-tea"), "10".to_owned())
        ]
    );
    let outcome = writer
        .upsert(batch_of(
            &category_fields,
            vec![row("tea", "Green tea", "10")],
        ))
        .await
        .unwrap();
    assert_eq!(outcome.updated, Some(1), "{outcome:?}");
    let (changes, _, _) = read_all(
        &medusa,
        read_request("product_categories", ReadMode::Incremental, checkpoint, 5),
    )
    .await;
    assert_eq!(column(&changes, "name"), [format!("{prefix} Green tea")]);
    eprintln!("test took {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test]
async fn a_product_medusa_refuses_is_exactly_one_reject_with_medusas_message() {
    let Some(server) = server() else { return };
    let started = Instant::now();
    let prefix = unique_name("refuse");
    let medusa = connect(&server, json!({"filters": {"products": {"q": prefix}}}));
    product(
        &medusa,
        &format!("{prefix}-taken"),
        &[(&format!("{prefix}-sku"), 1.0)],
    )
    .await;
    let product_fields = fields(&[
        ("handle", DataType::Text),
        ("title", DataType::Text),
        ("status", DataType::Text),
    ]);
    let mut writer = medusa
        .start_write(OpenStreamRequest {
            stream: "products".into(),
            fields: product_fields.clone(),
            key: vec!["handle".into()],
            create_if_missing: false,
            schema_evolution: Default::default(),
        })
        .await
        .unwrap();
    let outcome = writer
        .upsert(batch_of(
            &product_fields,
            vec![
                json!({"handle": format!("{prefix}-1"), "title": format!("{prefix} one"), "status": "published"}),
                json!({"handle": format!("{prefix}-2"), "title": format!("{prefix} two"), "status": "no-such-status"}),
                json!({"handle": format!("{prefix}-3"), "title": format!("{prefix} three"), "status": "draft"}),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(outcome.inserted, Some(2), "{outcome:?}");
    assert_eq!(outcome.rejected.len(), 1, "{outcome:?}");
    assert_eq!(outcome.rejected[0].row, 1);
    assert!(
        outcome.rejected[0]
            .reason
            .contains("Medusa refused the record (400")
            && outcome.rejected[0].reason.contains("status"),
        "{:?}",
        outcome.rejected[0]
    );
    let (rows, _, _) = read_all(&medusa, read_request("products", ReadMode::Full, None, 10)).await;
    let mut handles = column(&rows, "handle");
    handles.sort();
    assert_eq!(
        handles,
        [
            format!("{prefix}-1"),
            format!("{prefix}-3"),
            format!("{prefix}-taken")
        ]
    );

    // Deleting by handle, with product_delete = "unpublish": kept, as a draft.
    let unpublishing = connect(
        &server,
        json!({"product_delete": "unpublish", "filters": {"products": {"q": prefix}}}),
    );
    let mut writer = unpublishing
        .start_write(OpenStreamRequest {
            stream: "products".into(),
            fields: product_fields.clone(),
            key: vec!["handle".into()],
            create_if_missing: false,
            schema_evolution: Default::default(),
        })
        .await
        .unwrap();
    let keys = fields(&[("handle", DataType::Text)]);
    let outcome = writer
        .delete(batch_of(
            &keys,
            vec![json!({"handle": format!("{prefix}-1")})],
        ))
        .await
        .unwrap();
    assert_eq!(outcome.deleted, Some(1));
    let (rows, _, _) = read_all(&medusa, read_request("products", ReadMode::Full, None, 10)).await;
    let one = rows
        .iter()
        .find(|r| r["handle"] == json!(format!("{prefix}-1")))
        .unwrap();
    assert_eq!(one["status"], json!("draft"));
    eprintln!("test took {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test]
async fn stock_is_set_per_location_and_read_back_in_full() {
    let Some(server) = server() else { return };
    let started = Instant::now();
    let prefix = unique_name("stock");
    let medusa = connect(
        &server,
        json!({"filters": {"inventory_levels": {"q": prefix}}}),
    );
    let skus: Vec<String> = (0..3).map(|i| format!("{prefix}-{i}")).collect();
    let variants: Vec<(&str, f64)> = skus.iter().map(|s| (s.as_str(), 2.0)).collect();
    product(&medusa, &prefix, &variants).await;
    let mut locations = Vec::new();
    for name in ["north", "south"] {
        let answer = call(
            &medusa,
            Method::POST,
            "/admin/stock-locations",
            Some(json!({"name": format!("{prefix} {name}")})),
        )
        .await;
        locations.push(answer["stock_location"]["id"].as_str().unwrap().to_owned());
    }
    let level_fields = fields(&[
        ("sku", DataType::Text),
        ("location_id", DataType::Text),
        ("stocked_quantity", DataType::Int64),
    ]);
    let mut writer = medusa
        .start_write(OpenStreamRequest {
            stream: "inventory_levels".into(),
            fields: level_fields.clone(),
            key: vec!["sku".into(), "location_id".into()],
            create_if_missing: false,
            schema_evolution: Default::default(),
        })
        .await
        .unwrap();
    let outcome = writer
        .upsert(batch_of(
            &level_fields,
            vec![
                json!({"sku": skus[0], "location_id": locations[0], "stocked_quantity": 5}),
                json!({"sku": skus[0], "location_id": locations[1], "stocked_quantity": 7}),
                json!({"sku": skus[1], "location_id": locations[0], "stocked_quantity": 0}),
                json!({"sku": format!("{prefix}-missing"), "location_id": locations[0], "stocked_quantity": 1}),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(outcome.inserted, Some(3), "{outcome:?}");
    assert_eq!(outcome.rejected.len(), 1, "{outcome:?}");
    assert!(
        outcome.rejected[0].reason.contains("no inventory item"),
        "{outcome:?}"
    );
    let outcome = writer
        .upsert(batch_of(
            &level_fields,
            vec![json!({"sku": skus[0], "location_id": locations[1], "stocked_quantity": 9})],
        ))
        .await
        .unwrap();
    assert_eq!(outcome.updated, Some(1), "{outcome:?}");

    let (rows, _, _) = read_all(
        &medusa,
        read_request("inventory_levels", ReadMode::Full, None, 2),
    )
    .await;
    let mut levels: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["sku"].as_str().unwrap().to_owned(),
                r["location_id"].as_str().unwrap().to_owned(),
                r["stocked_quantity"].as_i64().unwrap(),
            )
        })
        .collect();
    levels.sort();
    let mut expected = vec![
        (skus[0].clone(), locations[0].clone(), 5),
        (skus[0].clone(), locations[1].clone(), 9),
        (skus[1].clone(), locations[0].clone(), 0),
    ];
    expected.sort();
    assert_eq!(levels, expected);

    let refused = medusa
        .start_read(read_request(
            "inventory_levels",
            ReadMode::Incremental,
            None,
            2,
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(refused.kind, ErrorKind::CONFIG);
    assert!(
        refused.message.contains("mode = \"full\""),
        "{}",
        refused.message
    );
    eprintln!("test took {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test]
async fn a_wrong_api_key_is_an_authentication_error_at_once_without_the_key() {
    let Some(server) = server() else { return };
    let config: MedusaConfig =
        serde_json::from_value(config_json(&server, json!({"api_key_env": WRONG_VAR}))).unwrap();
    let retrying = RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_secs(1),
        ..RetryPolicy::default()
    };
    let medusa = Medusa::connect_with_retry(config, retrying).unwrap();
    let started = Instant::now();
    let error = medusa.check_access().await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::AUTH, "{}", error.message);
    assert!(
        error.message.contains(WRONG_VAR) && error.message.contains("api_key_env"),
        "{}",
        error.message
    );
    assert!(!error.message.contains(WRONG_KEY) && !error.message.contains(&server.api_key));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not retried: {:?}",
        started.elapsed()
    );
    let read = medusa
        .start_read(read_request("products", ReadMode::Full, None, 5))
        .await;
    let error = match read {
        Ok(mut reader) => reader.next_batch().await.err().unwrap(),
        Err(e) => e,
    };
    assert_eq!(error.kind, ErrorKind::AUTH);
    assert!(!error.message.contains(WRONG_KEY));

    let unset: MedusaConfig = serde_json::from_value(config_json(
        &server,
        json!({"api_key_env": "LOCKSTEP_MEDUSA_SURELY_UNSET"}),
    ))
    .unwrap();
    let error = Medusa::connect(unset).err().unwrap();
    assert_eq!(error.kind, ErrorKind::CONFIG);
    assert!(
        error.message.contains("LOCKSTEP_MEDUSA_SURELY_UNSET"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn the_plugin_passes_the_conformance_kit() {
    let Some(server) = server() else { return };
    let started = Instant::now();
    let prefix = unique_name("conformance");
    let medusa = connect(&server, json!({}));
    for i in 0..5 {
        product(
            &medusa,
            &format!("{prefix}-{i}"),
            &[(&format!("{prefix}-sku-{i}"), 3.0)],
        )
        .await;
    }
    let report = lockstep_test_support::Conformance::new(lockstep_test_support::cdylib_path(
        "lockstep_connector_medusa",
    ))
    .source_config(config_json(
        &server,
        json!({"filters": {"products": {"q": prefix}}}),
    ))
    .bad_config(json!({"url": server.url()}))
    .bad_config(config_json(
        &server,
        json!({"filters": {"products": {"limit": "5"}}}),
    ))
    .bad_config(config_json(
        &server,
        json!({"filters": {"no_such_stream": {"q": "x"}}}),
    ))
    .stream("products")
    .batch_size(2)
    .cursor_field("updated_at")
    .run()
    .await
    .assert_passed();
    println!("{report}");
    eprintln!("test took {:.1} s", started.elapsed().as_secs_f64());
}
