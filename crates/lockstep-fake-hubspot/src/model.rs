//! The fake's data: object types, their property definitions, records, and the checks
//! HubSpot applies to property values on writes.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::{json, Value};

/// The CRM objects the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectType {
    Contacts,
    Companies,
    Deals,
}

impl ObjectType {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "contacts" | "0-1" => Some(Self::Contacts),
            "companies" | "0-2" => Some(Self::Companies),
            "deals" | "0-3" => Some(Self::Deals),
            _ => None,
        }
    }

    /// The property holding the last modification time. Per "CRM search" (developers.
    /// hubspot.com/docs/api/crm/search): `lastmodifieddate` for contacts,
    /// `hs_lastmodifieddate` for the other objects.
    pub fn last_modified_property(self) -> &'static str {
        match self {
            Self::Contacts => "lastmodifieddate",
            _ => "hs_lastmodifieddate",
        }
    }

    /// The singular upper-case name HubSpot uses in error messages.
    pub fn error_name(self) -> &'static str {
        match self {
            Self::Contacts => "CONTACT",
            Self::Companies => "COMPANY",
            Self::Deals => "DEAL",
        }
    }

    /// The properties returned when a request names none. Per "CRM search": contacts return
    /// createdate, email, firstname, hs_object_id, lastmodifieddate and lastname.
    pub fn default_properties(self) -> &'static [&'static str] {
        match self {
            Self::Contacts => &[
                "createdate",
                "email",
                "firstname",
                "hs_object_id",
                "lastmodifieddate",
                "lastname",
            ],
            Self::Companies => &[
                "createdate",
                "domain",
                "hs_lastmodifieddate",
                "hs_object_id",
                "name",
            ],
            Self::Deals => &[
                "amount",
                "closedate",
                "createdate",
                "dealname",
                "dealstage",
                "hs_lastmodifieddate",
                "hs_object_id",
                "pipeline",
            ],
        }
    }

    /// The property definitions, as the Properties API (developers.hubspot.com/docs/api/
    /// crm/properties) describes them: a `type` and a `fieldType`, `hasUniqueValue`,
    /// `calculated`, and `modificationMetadata.readOnlyValue`.
    pub fn properties(self) -> Vec<Property> {
        use PropertyType::*;
        let mut list = vec![
            Property::read_only("hs_object_id", Number),
            Property::read_only("createdate", DateTime),
            Property::read_only(self.last_modified_property(), DateTime),
        ];
        match self {
            Self::Contacts => {
                list.push(Property::unique("email", String));
                list.push(Property::new("firstname", String));
                list.push(Property::new("lastname", String));
                list.push(Property::new("phone", String));
                list.push(Property::new("date_of_birth", Date));
                list.push(Property::new("hs_email_optout", Bool));
                list.push(Property::enumeration(
                    "lifecyclestage",
                    &["subscriber", "lead", "customer"],
                ));
                list.push(Property::calculated("num_associated_deals", Number));
            }
            Self::Companies => {
                list.push(Property::unique("domain", String));
                list.push(Property::new("name", String));
                list.push(Property::new("numberofemployees", Number));
                list.push(Property::new("is_public", Bool));
            }
            Self::Deals => {
                list.push(Property::new("dealname", String));
                list.push(Property::new("amount", Number));
                list.push(Property::new("closedate", DateTime));
                list.push(Property::enumeration(
                    "dealstage",
                    &["appointmentscheduled", "closedwon", "closedlost"],
                ));
                list.push(Property::enumeration("pipeline", &["default"]));
            }
        }
        list
    }
}

/// A property's `type` in HubSpot's Properties API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyType {
    String,
    Number,
    Date,
    DateTime,
    Bool,
    Enumeration,
}

impl PropertyType {
    fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Number => "number",
            Self::Date => "date",
            Self::DateTime => "datetime",
            Self::Bool => "bool",
            Self::Enumeration => "enumeration",
        }
    }

    fn field_type(self) -> &'static str {
        match self {
            Self::String => "text",
            Self::Number => "number",
            Self::Date | Self::DateTime => "date",
            Self::Bool => "booleancheckbox",
            Self::Enumeration => "select",
        }
    }
}

/// One property definition.
#[derive(Debug, Clone)]
pub struct Property {
    pub name: &'static str,
    pub kind: PropertyType,
    pub read_only: bool,
    pub calculated: bool,
    pub unique: bool,
    pub options: Vec<&'static str>,
}

impl Property {
    fn new(name: &'static str, kind: PropertyType) -> Self {
        Self {
            name,
            kind,
            read_only: false,
            calculated: false,
            unique: false,
            options: Vec::new(),
        }
    }
    fn read_only(name: &'static str, kind: PropertyType) -> Self {
        Self {
            read_only: true,
            ..Self::new(name, kind)
        }
    }
    fn calculated(name: &'static str, kind: PropertyType) -> Self {
        Self {
            calculated: true,
            read_only: true,
            ..Self::new(name, kind)
        }
    }
    fn unique(name: &'static str, kind: PropertyType) -> Self {
        Self {
            unique: true,
            ..Self::new(name, kind)
        }
    }
    fn enumeration(name: &'static str, options: &[&'static str]) -> Self {
        Self {
            options: options.to_vec(),
            ..Self::new(name, PropertyType::Enumeration)
        }
    }

    /// The definition as the Properties API answers it.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "label": self.name,
            "type": self.kind.name(),
            "fieldType": self.kind.field_type(),
            "description": "",
            "groupName": "info",
            "options": self.options.iter().enumerate().map(|(i, o)| json!({
                "label": o, "value": o, "displayOrder": i, "hidden": false
            })).collect::<Vec<_>>(),
            "hidden": false,
            "hasUniqueValue": self.unique,
            "calculated": self.calculated,
            "formField": !self.read_only,
            "modificationMetadata": {
                "archivable": !self.read_only,
                "readOnlyDefinition": self.read_only,
                "readOnlyValue": self.read_only
            }
        })
    }

    /// Checks a value written through the API and returns it as stored (text, as HubSpot
    /// returns every property value). An empty string clears the value, per "Update
    /// contacts": "Properties values can be cleared by passing an empty string".
    pub fn check(&self, value: &Value) -> Result<String, (String, &'static str)> {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => String::new(),
            other => {
                return Err((
                    format!("{other} is not a valid value for {}", self.name),
                    "INVALID_VALUE",
                ))
            }
        };
        if text.is_empty() {
            return Ok(text);
        }
        let bad = |error: &'static str, what: &str| {
            Err((format!("{text} was not a valid {what}."), error))
        };
        match self.kind {
            PropertyType::String => Ok(text),
            PropertyType::Number => match text.parse::<f64>() {
                Ok(n) if n.is_finite() => Ok(text),
                _ => bad("INVALID_DOUBLE", "number"),
            },
            PropertyType::Bool => match text.as_str() {
                "true" | "false" => Ok(text),
                _ => bad("INVALID_BOOLEAN", "boolean (true or false)"),
            },
            PropertyType::Enumeration => {
                if self.options.contains(&text.as_str()) {
                    Ok(text)
                } else {
                    bad("INVALID_OPTION", "option")
                }
            }
            // Per "Properties": date values are `YYYY-MM-DD` or midnight UTC in milliseconds.
            PropertyType::Date => {
                if NaiveDate::parse_from_str(&text, "%Y-%m-%d").is_ok() {
                    return Ok(text);
                }
                match text
                    .parse::<i64>()
                    .ok()
                    .and_then(DateTime::from_timestamp_millis)
                {
                    Some(at) if at.timestamp_millis() % 86_400_000 == 0 => {
                        Ok(at.format("%Y-%m-%d").to_string())
                    }
                    _ => bad(
                        "INVALID_DATE",
                        "date (YYYY-MM-DD, or midnight UTC in milliseconds)",
                    ),
                }
            }
            // Datetime values are ISO 8601 or milliseconds since the epoch; stored as ISO 8601
            // with milliseconds in UTC, the way the v3 API returns them.
            PropertyType::DateTime => match parse_datetime_ms(&text) {
                Some(ms) => Ok(format_ms(ms)),
                None => bad("INVALID_DATETIME", "datetime (ISO 8601 or milliseconds)"),
            },
        }
    }
}

/// A datetime value or filter as milliseconds: epoch milliseconds or ISO 8601.
pub fn parse_datetime_ms(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// Milliseconds as HubSpot writes datetimes: `2019-10-30T03:30:17.883Z`.
pub fn format_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One CRM record.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: u64,
    pub properties: BTreeMap<String, String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub archived_ms: Option<i64>,
}

impl Record {
    /// The record as the API answers it, with the properties asked for (or the defaults).
    /// Per "CRM objects": a property asked for that has no value is `null`, and one that does
    /// not exist is left out.
    pub fn to_json(&self, object: ObjectType, asked: Option<&[String]>) -> Value {
        let defs = object.properties();
        let names: Vec<&str> = match asked {
            Some(names) if !names.is_empty() => names.iter().map(String::as_str).collect(),
            _ => object.default_properties().to_vec(),
        };
        let mut properties = serde_json::Map::new();
        for name in names {
            if defs.iter().any(|p| p.name == name) {
                let value = self.property(object, name);
                properties.insert(
                    name.to_owned(),
                    value.map(Value::String).unwrap_or(Value::Null),
                );
            }
        }
        let mut json = json!({
            "id": self.id.to_string(),
            "properties": properties,
            "createdAt": format_ms(self.created_ms),
            "updatedAt": format_ms(self.updated_ms),
            "archived": self.archived_ms.is_some(),
        });
        if let Some(at) = self.archived_ms {
            json["archivedAt"] = Value::String(format_ms(at));
        }
        json
    }

    /// A property's value, the system properties included.
    pub fn property(&self, object: ObjectType, name: &str) -> Option<String> {
        match name {
            "hs_object_id" => Some(self.id.to_string()),
            "createdate" => Some(format_ms(self.created_ms)),
            n if n == object.last_modified_property() => Some(format_ms(self.updated_ms)),
            n => self.properties.get(n).filter(|v| !v.is_empty()).cloned(),
        }
    }
}

/// Every record of every object type.
///
/// Invariant: `unique` holds exactly the live records' non-empty values of their object's
/// unique properties; every change to a record goes through [`Store::modify`], which keeps
/// it so.
#[derive(Debug, Default)]
pub struct Store {
    objects: BTreeMap<ObjectType, BTreeMap<u64, Record>>,
    /// The live record holding each value of a unique property. HubSpot finds a record by
    /// `email` (or another unique property) without a scan, and so does the fake: a
    /// benchmark of 20,000 upserts measures the connector, not a linear search here.
    unique: HashMap<(ObjectType, &'static str, String), u64>,
    next_id: u64,
    last_ms: i64,
}

impl Store {
    /// The time of a write: now in milliseconds, never before the previous write's.
    pub fn tick(&mut self) -> i64 {
        self.last_ms = Utc::now().timestamp_millis().max(self.last_ms);
        self.last_ms
    }

    pub fn records(&self, object: ObjectType) -> impl Iterator<Item = &Record> {
        self.objects
            .get(&object)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// The records of `object` from id `first` on, in id order (a page of the list
    /// endpoint starts there without walking the records before it).
    pub fn records_from(&self, object: ObjectType, first: u64) -> impl Iterator<Item = &Record> {
        self.objects
            .get(&object)
            .into_iter()
            .flat_map(move |m| m.range(first..).map(|(_, r)| r))
    }

    pub fn all(&self, object: ObjectType) -> Vec<Record> {
        self.records(object).cloned().collect()
    }

    pub fn get(&self, object: ObjectType, id: u64) -> Option<&Record> {
        self.objects.get(&object)?.get(&id)
    }

    /// Changes the record `id` with `change`, keeping the unique-value index in step.
    /// `None` when there is no such record.
    pub fn modify<T>(
        &mut self,
        object: ObjectType,
        id: u64,
        change: impl FnOnce(&mut Record) -> T,
    ) -> Option<T> {
        let record = self.objects.get_mut(&object)?.get_mut(&id)?;
        for entry in unique_entries(object, record) {
            self.unique.remove(&entry);
        }
        let result = change(record);
        for entry in unique_entries(object, record) {
            self.unique.insert(entry, id);
        }
        Some(result)
    }

    pub fn create(
        &mut self,
        object: ObjectType,
        properties: BTreeMap<String, String>,
        now: i64,
    ) -> &Record {
        self.next_id += 1;
        let id = self.next_id;
        let record = Record {
            id,
            properties,
            created_ms: now,
            updated_ms: now,
            archived_ms: None,
        };
        for entry in unique_entries(object, &record) {
            self.unique.insert(entry, id);
        }
        self.objects.entry(object).or_default().insert(id, record);
        &self.objects[&object][&id]
    }

    /// The live record whose unique property `name` holds `value`.
    pub fn find_unique(&self, object: ObjectType, name: &str, value: &str) -> Option<u64> {
        let name = object
            .properties()
            .into_iter()
            .find(|p| p.name == name)?
            .name;
        self.unique.get(&(object, name, value.to_owned())).copied()
    }
}

/// The index entries of `record`: its non-empty values of its object's unique properties,
/// none when it is archived.
fn unique_entries(object: ObjectType, record: &Record) -> Vec<(ObjectType, &'static str, String)> {
    if record.archived_ms.is_some() {
        return Vec::new();
    }
    object
        .properties()
        .into_iter()
        .filter(|p| p.unique)
        .filter_map(|p| {
            let value = record.properties.get(p.name).filter(|v| !v.is_empty())?;
            Some((object, p.name, value.clone()))
        })
        .collect()
}
