//! The streams, their fields, and how a record of Medusa's admin API becomes a row.
//!
//! Each stream is one admin list endpoint. The connector asks for the fields it serves
//! (`fields=`) and flattens what Medusa nests: a product's categories become `category_ids`
//! and its options `options` (`[{"title", "values"}]`); a variant's options become an object
//! `{"<option title>": "<value>"}` and its prices one decimal column per store currency,
//! `price_<currency>` (Medusa amounts are decimals in the currency's major unit: 10.5 EUR is
//! `10.5`); an order's line items become a compact JSON list; an inventory item's location
//! levels become rows of their own.
//!
//! Which streams can be read incrementally (by `updated_at`) and which in full only, and
//! which list deleted records, is in [`StreamDef`]; docs/medusa.md says why.
//!
//! Invariant: a value that does not fit its field's logical type is a schema error naming the
//! stream, the record and the field (see `read`), never a null.

use lockstep_http_kit::convert::JsonField;
use lockstep_plugin_sdk::{DataType, FieldInfo, StreamInfo};
use serde_json::{json, Map, Value};

/// The streams this connector serves.
pub const STREAMS: [&str; 6] = [
    "products",
    "product_variants",
    "product_categories",
    "inventory_levels",
    "customers",
    "orders",
];

/// Money: Medusa keeps amounts as arbitrary-precision decimals in major units.
pub const MONEY: DataType = DataType::Decimal {
    precision: 24,
    scale: 6,
};

/// One stream: its list endpoint and what it supports.
#[derive(Debug, Clone, Copy)]
pub struct StreamDef {
    pub name: &'static str,
    /// The admin list endpoint.
    pub path: &'static str,
    /// The answer's key holding the records.
    pub list_key: &'static str,
    /// Whether the endpoint filters and orders by `updated_at` and every change of the
    /// stream's fields bumps it.
    pub incremental: bool,
    /// Whether the endpoint lists soft-deleted records with `with_deleted=true` (and
    /// deleting bumps `updated_at`), so that deletes reach an incremental read as
    /// tombstones (`deleted_at` set).
    pub tombstones: bool,
}

/// The definition of `name`, if this connector serves it.
pub fn def(name: &str) -> Option<StreamDef> {
    let (path, list_key, incremental, tombstones) = match name {
        "products" => ("/admin/products", "products", true, true),
        "product_variants" => ("/admin/product-variants", "variants", true, false),
        "product_categories" => (
            "/admin/product-categories",
            "product_categories",
            true,
            false,
        ),
        // Levels are read through their inventory items, which refuse an `updated_at`
        // filter; a reservation bumps the level, not the item.
        "inventory_levels" => ("/admin/inventory-items", "inventory_items", false, false),
        "customers" => ("/admin/customers", "customers", true, false),
        "orders" => ("/admin/orders", "orders", true, false),
        _ => return None,
    };
    let name = STREAMS.iter().find(|s| **s == name)?;
    Some(StreamDef {
        name,
        path,
        list_key,
        incremental,
        tombstones,
    })
}

fn field(name: &str, data_type: DataType, native: &str) -> JsonField {
    JsonField::top_level(FieldInfo {
        name: name.into(),
        data_type,
        nullable: name != "id",
        native_type: Some(native.into()),
    })
}

const TEXT: DataType = DataType::Text;
const TIME: DataType = DataType::TimestampTz;
const BOOL: DataType = DataType::Boolean;
const JSON: DataType = DataType::Json;
const INT: DataType = DataType::Int64;

/// A stream's fields, in order; `currencies` are the store's currency codes (lowercase), one
/// price column each for variants.
pub fn fields(stream: &str, currencies: &[String]) -> Vec<JsonField> {
    let mut out = vec![field("id", TEXT, "id")];
    let plain: &[(&str, DataType, &str)] = match stream {
        "products" => &[
            ("title", TEXT, "string"),
            ("handle", TEXT, "string (unique)"),
            ("subtitle", TEXT, "string"),
            ("description", TEXT, "string"),
            ("status", TEXT, "enum: draft, proposed, published, rejected"),
            ("external_id", TEXT, "string"),
            ("thumbnail", TEXT, "url"),
            ("is_giftcard", BOOL, "boolean"),
            ("discountable", BOOL, "boolean"),
            ("weight", DataType::Float64, "number"),
            ("collection_id", TEXT, "id"),
            ("type_id", TEXT, "id"),
            ("category_ids", JSON, "list of category ids"),
            ("options", JSON, "list of {title, values}"),
            ("metadata", JSON, "object"),
        ],
        "product_variants" => &[
            ("product_id", TEXT, "id"),
            ("product_handle", TEXT, "string (the product's handle)"),
            ("title", TEXT, "string"),
            ("sku", TEXT, "string (unique)"),
            ("barcode", TEXT, "string"),
            ("ean", TEXT, "string"),
            ("upc", TEXT, "string"),
            ("allow_backorder", BOOL, "boolean"),
            ("manage_inventory", BOOL, "boolean"),
            ("variant_rank", INT, "integer"),
            ("options", JSON, "object {option title: value}"),
            ("metadata", JSON, "object"),
        ],
        "product_categories" => &[
            ("name", TEXT, "string"),
            ("handle", TEXT, "string (unique)"),
            ("description", TEXT, "string"),
            ("external_id", TEXT, "string"),
            ("is_active", BOOL, "boolean"),
            ("is_internal", BOOL, "boolean"),
            ("rank", INT, "integer"),
            ("parent_category_id", TEXT, "id"),
            ("metadata", JSON, "object"),
        ],
        "inventory_levels" => &[
            ("inventory_item_id", TEXT, "id"),
            ("sku", TEXT, "string (the inventory item's)"),
            ("location_id", TEXT, "id"),
            ("stocked_quantity", INT, "number"),
            ("reserved_quantity", INT, "number (read-only)"),
            ("incoming_quantity", INT, "number"),
            ("available_quantity", INT, "number (read-only)"),
        ],
        "customers" => &[
            ("email", TEXT, "string"),
            ("first_name", TEXT, "string"),
            ("last_name", TEXT, "string"),
            ("company_name", TEXT, "string"),
            ("phone", TEXT, "string"),
            ("has_account", BOOL, "boolean (read-only)"),
            ("metadata", JSON, "object"),
        ],
        "orders" => &[
            ("display_id", INT, "integer"),
            (
                "status",
                TEXT,
                "enum: pending, completed, draft, archived, canceled, requires_action",
            ),
            ("email", TEXT, "string"),
            ("customer_id", TEXT, "id"),
            ("region_id", TEXT, "id"),
            ("sales_channel_id", TEXT, "id"),
            ("currency_code", TEXT, "string"),
            ("total", MONEY, "decimal, major units"),
            ("subtotal", MONEY, "decimal, major units"),
            ("tax_total", MONEY, "decimal, major units"),
            ("shipping_total", MONEY, "decimal, major units"),
            ("discount_total", MONEY, "decimal, major units"),
            ("payment_status", TEXT, "string"),
            ("fulfillment_status", TEXT, "string"),
            ("canceled_at", TIME, "datetime"),
            (
                "items",
                JSON,
                "list of {id, variant_id, sku, title, quantity, unit_price}",
            ),
            ("metadata", JSON, "object"),
        ],
        _ => &[],
    };
    for (name, data_type, native) in plain {
        out.push(field(name, *data_type, native));
    }
    if stream == "product_variants" {
        for currency in currencies {
            out.push(field(
                &price_field(currency),
                MONEY,
                &format!("decimal, major units of {}", currency.to_uppercase()),
            ));
        }
    }
    out.push(field("created_at", TIME, "datetime (read-only)"));
    out.push(field("updated_at", TIME, "datetime (read-only)"));
    if stream != "inventory_levels" && stream != "orders" {
        out.push(field("deleted_at", TIME, "datetime (read-only)"));
    }
    out
}

/// The price column of `currency`.
pub fn price_field(currency: &str) -> String {
    format!("price_{}", currency.to_lowercase())
}

/// The `fields` query parameter that asks Medusa for what [`shape`] needs.
pub fn fields_param(stream: &str) -> &'static str {
    match stream {
        "products" => {
            "id,title,handle,subtitle,description,status,external_id,thumbnail,is_giftcard,\
             discountable,weight,collection_id,type_id,metadata,created_at,updated_at,deleted_at,\
             categories.id,options.title,options.values.value"
        }
        "product_variants" => {
            "id,product_id,title,sku,barcode,ean,upc,allow_backorder,manage_inventory,\
             variant_rank,metadata,created_at,updated_at,deleted_at,options.value,\
             options.option.title,prices.amount,prices.currency_code,prices.min_quantity,\
             prices.max_quantity,prices.rules,product.handle"
        }
        "product_categories" => {
            "id,name,handle,description,external_id,is_active,is_internal,rank,\
             parent_category_id,metadata,created_at,updated_at,deleted_at"
        }
        "inventory_levels" => "id,sku,location_levels.*",
        "customers" => {
            "id,email,first_name,last_name,company_name,phone,has_account,metadata,created_at,\
             updated_at,deleted_at"
        }
        "orders" => {
            "id,display_id,status,email,customer_id,region_id,sales_channel_id,currency_code,\
             total,subtotal,tax_total,shipping_total,discount_total,payment_status,\
             fulfillment_status,canceled_at,metadata,created_at,updated_at,items.id,\
             items.variant_id,items.variant_sku,items.title,items.quantity,items.unit_price"
        }
        _ => "id",
    }
}

/// The catalog entry of `stream`.
pub fn stream_info(stream: &str, currencies: &[String]) -> StreamInfo {
    let incremental = def(stream).is_some_and(|d| d.incremental);
    StreamInfo {
        name: stream.into(),
        fields: fields(stream, currencies)
            .into_iter()
            .map(|f| f.field)
            .collect(),
        primary_key: vec!["id".into()],
        cursor_candidates: if incremental {
            vec!["updated_at".into()]
        } else {
            vec![]
        },
    }
}

/// A number as the decimal text it was sent as (JSON numbers of Medusa are JavaScript
/// doubles, printed shortest-first; serde_json prints them back the same way).
fn decimal_text(value: &Value) -> Value {
    match value {
        Value::Number(n) => {
            let text = n.to_string();
            // `1e-7` and the like: spell them out, so that the decimal parser takes them.
            match (text.contains(['e', 'E']), n.as_f64()) {
                (true, Some(f)) => Value::String(format!("{f:.12}")),
                _ => Value::String(text),
            }
        }
        other => other.clone(),
    }
}

/// Rewrites a record of `stream` as Medusa sent it into the row the fields point into.
/// Inventory items are expanded by [`levels_of`] instead.
pub fn shape(stream: &str, record: &mut Value) {
    let Some(object) = record.as_object_mut() else {
        return;
    };
    match stream {
        "products" => {
            let categories: Vec<Value> = list(object.get("categories"))
                .iter()
                .filter_map(|c| c.get("id").cloned())
                .collect();
            object.insert("category_ids".into(), Value::Array(categories));
            let options: Vec<Value> = list(object.get("options"))
                .iter()
                .map(|o| {
                    let values: Vec<Value> = list(o.get("values"))
                        .iter()
                        .filter_map(|v| v.get("value").cloned())
                        .collect();
                    json!({"title": o.get("title").cloned().unwrap_or(Value::Null), "values": values})
                })
                .collect();
            object.insert("options".into(), Value::Array(options));
        }
        "product_variants" => {
            let handle = object
                .get("product")
                .and_then(|p| p.get("handle"))
                .cloned()
                .unwrap_or(Value::Null);
            object.insert("product_handle".into(), handle);
            let mut options = Map::new();
            for value in list(object.get("options")) {
                if let (Some(title), Some(v)) = (
                    value.pointer("/option/title").and_then(Value::as_str),
                    value.get("value"),
                ) {
                    options.insert(title.to_owned(), v.clone());
                }
            }
            object.insert("options".into(), Value::Object(options));
            for price in list(object.get("prices")).to_vec() {
                if !plain_price(&price) {
                    continue;
                }
                if let Some(currency) = price.get("currency_code").and_then(Value::as_str) {
                    object.insert(
                        price_field(currency),
                        decimal_text(price.get("amount").unwrap_or(&Value::Null)),
                    );
                }
            }
        }
        "orders" => {
            for money in [
                "total",
                "subtotal",
                "tax_total",
                "shipping_total",
                "discount_total",
            ] {
                if let Some(v) = object.get(money).map(decimal_text) {
                    object.insert(money.into(), v);
                }
            }
            let items: Vec<Value> = list(object.get("items"))
                .iter()
                .map(|i| {
                    json!({
                        "id": i.get("id"),
                        "variant_id": i.get("variant_id"),
                        "sku": i.get("variant_sku"),
                        "title": i.get("title"),
                        "quantity": i.get("quantity"),
                        "unit_price": decimal_text(i.get("unit_price").unwrap_or(&Value::Null)),
                    })
                })
                .collect();
            object.insert("items".into(), Value::Array(items));
        }
        _ => {}
    }
}

/// Whether a price is the variant's plain price in its currency: no price rules and no
/// quantity tiers (those are price lists' and tiers' prices, not the list price).
pub fn plain_price(price: &Value) -> bool {
    let no_rules = match price.get("rules") {
        None | Some(Value::Null) => true,
        Some(Value::Object(rules)) => rules.is_empty(),
        Some(Value::Array(rules)) => rules.is_empty(),
        Some(_) => false,
    };
    no_rules
        && price.get("min_quantity").is_none_or(Value::is_null)
        && price.get("max_quantity").is_none_or(Value::is_null)
}

/// The location levels of an inventory item, as rows of `inventory_levels`, ordered by
/// location.
pub fn levels_of(item: &Value) -> Vec<Value> {
    let mut levels: Vec<Value> = list(item.get("location_levels"))
        .iter()
        .filter(|l| l.get("deleted_at").is_none_or(Value::is_null))
        .map(|l| {
            json!({
                "id": l.get("id"),
                "inventory_item_id": item.get("id"),
                "sku": item.get("sku"),
                "location_id": l.get("location_id"),
                "stocked_quantity": l.get("stocked_quantity"),
                "reserved_quantity": l.get("reserved_quantity"),
                "incoming_quantity": l.get("incoming_quantity"),
                "available_quantity": l.get("available_quantity"),
                "created_at": l.get("created_at"),
                "updated_at": l.get("updated_at"),
            })
        })
        .collect();
    levels.sort_by(|a, b| {
        a["location_id"]
            .as_str()
            .unwrap_or_default()
            .cmp(b["location_id"].as_str().unwrap_or_default())
    });
    levels
}

fn list(value: Option<&Value>) -> &[Value] {
    value
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variant_becomes_options_and_one_price_per_currency() {
        let mut record = json!({
            "id": "variant_1",
            "options": [{"value": "M", "option": {"title": "Size"}}],
            "prices": [
                {"amount": 10.5, "currency_code": "eur", "rules": {}},
                {"amount": 12, "currency_code": "usd", "rules": {}, "min_quantity": null},
                {"amount": 9, "currency_code": "eur", "rules": {"region_id": "reg_1"}},
                {"amount": 8, "currency_code": "eur", "rules": {}, "min_quantity": 10},
            ],
        });
        shape("product_variants", &mut record);
        assert_eq!(record["options"], json!({"Size": "M"}));
        assert_eq!(record["price_eur"], json!("10.5"));
        assert_eq!(record["price_usd"], json!("12"));
    }

    #[test]
    fn a_product_lists_its_category_ids_and_options() {
        let mut record = json!({
            "id": "prod_1",
            "categories": [{"id": "pcat_1"}, {"id": "pcat_2"}],
            "options": [{"title": "Size", "values": [{"value": "S"}, {"value": "M"}]}],
        });
        shape("products", &mut record);
        assert_eq!(record["category_ids"], json!(["pcat_1", "pcat_2"]));
        assert_eq!(
            record["options"],
            json!([{"title": "Size", "values": ["S", "M"]}])
        );
    }

    #[test]
    fn tiny_amounts_are_spelled_out_for_the_decimal_parser() {
        assert_eq!(decimal_text(&json!(1e-7)), json!("0.000000100000"));
        assert_eq!(decimal_text(&json!(23.5)), json!("23.5"));
    }

    #[test]
    fn every_stream_has_a_definition_and_a_key() {
        for stream in STREAMS {
            let def = def(stream).unwrap();
            assert!(def.path.starts_with("/admin/"));
            let info = stream_info(stream, &["eur".into()]);
            assert_eq!(info.primary_key, ["id"]);
            assert!(info.field("updated_at").is_some());
        }
        assert!(stream_info("product_variants", &["eur".into()])
            .field("price_eur")
            .is_some());
    }
}
