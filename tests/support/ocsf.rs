//! An OCSF validator built from the schema files in `../shared/data/ocsf-schema-1.8.0`: an
//! event class with everything it inherits (`extends`, `$include`d profiles and includes),
//! its objects the same way, each attribute's type and array-ness from `dictionary.json`,
//! enums (the class's own or the dictionary's), required attributes, the objects'
//! `at_least_one` / `just_one` constraints, and no attribute the schema does not define
//! (`unmapped` and `json_t` hold anything). `class_uid`, `category_uid` and `type_uid` must
//! agree with the class and `activity_id`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

pub struct Ocsf {
    root: PathBuf,
    dict: Map<String, Value>,
    types: Map<String, Value>,
    /// name → resolved attributes (spec per attribute), constraints
    classes: BTreeMap<String, (Map<String, Value>, i64, i64)>,
    objects: BTreeMap<String, (Map<String, Value>, Value)>,
}

fn read(p: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

impl Ocsf {
    pub fn load() -> Ocsf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ocsf-schema-1.8.0");
        let dict = read(&root.join("dictionary.json"));
        let mut o = Ocsf {
            dict: dict["attributes"].as_object().unwrap().clone(),
            types: dict["types"]["attributes"].as_object().unwrap().clone(),
            root: root.clone(),
            classes: BTreeMap::new(),
            objects: BTreeMap::new(),
        };
        let cats = read(&root.join("categories.json"));
        let mut raw_events = BTreeMap::new();
        let mut list = Vec::new();
        files(&root.join("events"), &mut list);
        for p in list {
            let v = read(&p);
            if let Some(n) = v["name"].as_str() {
                raw_events.insert(n.to_owned(), v);
            }
        }
        let mut raw_objects = BTreeMap::new();
        let mut list = Vec::new();
        files(&root.join("objects"), &mut list);
        for p in list {
            let v = read(&p);
            if let Some(n) = v["name"].as_str() {
                raw_objects.insert(n.to_owned(), v);
            }
        }
        for name in raw_events.keys() {
            let (attrs, _) = o.resolve(&raw_events, name);
            // The category: the class's own or the nearest ancestor's.
            let mut cat = None;
            let mut uid = raw_events[name]["uid"].as_i64();
            let mut at = Some(name.clone());
            while let Some(n) = at {
                let v = &raw_events[&n];
                cat = cat.or_else(|| v["category"].as_str().map(str::to_owned));
                uid = uid.or(v["uid"].as_i64());
                at = v["extends"].as_str().map(str::to_owned);
            }
            let cat_uid = cat
                .as_deref()
                .and_then(|c| cats["attributes"][c]["uid"].as_i64())
                .unwrap_or(0);
            let class_uid = cat_uid * 1000 + uid.unwrap_or(0);
            o.classes.insert(name.clone(), (attrs, class_uid, cat_uid));
        }
        for name in raw_objects.keys() {
            let (attrs, constraints) = o.resolve(&raw_objects, name);
            o.objects.insert(name.clone(), (attrs, constraints));
        }
        o
    }

    /// A class's or object's attributes with everything it inherits, and its constraints.
    fn resolve(&self, raw: &BTreeMap<String, Value>, name: &str) -> (Map<String, Value>, Value) {
        let v = &raw[name];
        let (mut attrs, mut constraints) = match v["extends"].as_str() {
            Some(parent) if raw.contains_key(parent) => self.resolve(raw, parent),
            _ => (Map::new(), Value::Null),
        };
        let own = v["attributes"].as_object().cloned().unwrap_or_default();
        for (k, spec) in own {
            if k == "$include" {
                let incs: Vec<String> = match &spec {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(a) => a
                        .iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect(),
                    _ => vec![],
                };
                for inc in incs {
                    let p = self.root.join(&inc);
                    let iv = read(&p);
                    // A profile's attributes belong to it: required only where an event says
                    // it applies the profile (`metadata.profiles`).
                    let profile = inc
                        .starts_with("profiles/")
                        .then(|| iv["name"].clone())
                        .filter(Value::is_string);
                    for (ik, mut is) in iv["attributes"].as_object().cloned().unwrap_or_default() {
                        if let (Some(p), Some(o)) = (&profile, is.as_object_mut())
                            && o.get("profile").is_none_or(Value::is_null)
                        {
                            o.insert("profile".into(), p.clone());
                        }
                        merge(&mut attrs, ik, is);
                    }
                }
                continue;
            }
            merge(&mut attrs, k, spec);
        }
        if !v["constraints"].is_null() {
            constraints = v["constraints"].clone();
        }
        (attrs, constraints)
    }

    /// Every problem with `event` as an instance of OCSF class `class` (empty: valid).
    pub fn validate(&self, class: &str, event: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        let Some((attrs, class_uid, cat_uid)) = self.classes.get(class) else {
            return vec![format!("no class {class}")];
        };
        let profiles: Vec<String> = event["metadata"]["profiles"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        self.check_object(attrs, &Value::Null, event, class, &profiles, &mut errs);
        if event["class_uid"].as_i64() != Some(*class_uid) {
            errs.push(format!(
                "class_uid {} is not {class_uid}",
                event["class_uid"]
            ));
        }
        if event["category_uid"].as_i64() != Some(*cat_uid) {
            errs.push(format!(
                "category_uid {} is not {cat_uid}",
                event["category_uid"]
            ));
        }
        let want_type = class_uid * 100 + event["activity_id"].as_i64().unwrap_or(-1);
        if event["type_uid"].as_i64() != Some(want_type) {
            errs.push(format!("type_uid {} is not {want_type}", event["type_uid"]));
        }
        errs
    }

    fn check_object(
        &self,
        attrs: &Map<String, Value>,
        constraints: &Value,
        v: &Value,
        at: &str,
        profiles: &[String],
        errs: &mut Vec<String>,
    ) {
        let Some(obj) = v.as_object() else {
            errs.push(format!("{at}: not an object"));
            return;
        };
        for (k, spec) in attrs {
            let applies = spec["profile"]
                .as_str()
                .is_none_or(|p| profiles.iter().any(|q| q == p));
            if applies && spec["requirement"] == "required" && obj.get(k).is_none_or(Value::is_null)
            {
                errs.push(format!("{at}.{k}: required"));
            }
        }
        for key in ["at_least_one", "just_one"] {
            if let Some(names) = constraints[key].as_array() {
                let n = names
                    .iter()
                    .filter(|n| {
                        n.as_str()
                            .is_some_and(|n| obj.get(n).is_some_and(|v| !v.is_null()))
                    })
                    .count();
                if n == 0 || (key == "just_one" && n > 1) {
                    errs.push(format!("{at}: {key} of {names:?}"));
                }
            }
        }
        for (k, val) in obj {
            if val.is_null() {
                continue;
            }
            let Some(spec) = attrs.get(k) else {
                errs.push(format!("{at}.{k}: not an attribute of this class/object"));
                continue;
            };
            let d = self.dict.get(k).cloned().unwrap_or(Value::Null);
            let ty = spec["type"].as_str().or(d["type"].as_str()).unwrap_or("");
            let is_array = spec["is_array"]
                .as_bool()
                .or(d["is_array"].as_bool())
                .unwrap_or(false);
            // The uids a class is named by are checked against the class itself (below).
            let enm = if ["class_uid", "category_uid", "type_uid"].contains(&k.as_str()) {
                &Value::Null
            } else if spec["enum"].is_object() {
                &spec["enum"]
            } else {
                &d["enum"]
            };
            let path = format!("{at}.{k}");
            if is_array {
                match val.as_array() {
                    Some(items) => {
                        for (i, it) in items.iter().enumerate() {
                            self.check_value(ty, enm, it, &format!("{path}[{i}]"), profiles, errs);
                        }
                    }
                    None => errs.push(format!("{path}: not an array")),
                }
            } else {
                self.check_value(ty, enm, val, &path, profiles, errs);
            }
        }
    }

    fn check_value(
        &self,
        ty: &str,
        enm: &Value,
        v: &Value,
        at: &str,
        profiles: &[String],
        errs: &mut Vec<String>,
    ) {
        if let Some(e) = enm.as_object() {
            let key = match v {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                _ => String::new(),
            };
            if !e.contains_key(&key) {
                errs.push(format!(
                    "{at}: {v} is not one of {:?}",
                    e.keys().collect::<Vec<_>>()
                ));
            }
        }
        // Primitive types resolve through the type table (timestamp_t is a long_t…).
        let mut base = ty.to_owned();
        for _ in 0..4 {
            match self.types.get(&base).and_then(|t| t["type"].as_str()) {
                Some(b) if b != base => base = b.to_owned(),
                _ => break,
            }
        }
        let range = self
            .types
            .get(ty)
            .map(|t| t["range"].clone())
            .unwrap_or(Value::Null);
        let ok = match base.as_str() {
            "json_t" => true,
            "object" => v.is_object(),
            "string_t" => v.is_string(),
            "integer_t" | "long_t" => v.as_i64().is_some(),
            "float_t" => v.is_number(),
            "boolean_t" => v.is_boolean(),
            _ if ty.ends_with("_t") => v.is_string(),
            _ => {
                match self.objects.get(ty) {
                    Some((attrs, c)) => self.check_object(attrs, c, v, at, profiles, errs),
                    None => errs.push(format!("{at}: unknown type {ty}")),
                }
                true
            }
        };
        if !ok {
            errs.push(format!("{at}: {v} is not a {ty}"));
        }
        if ty == "ip_t"
            && v.as_str()
                .is_some_and(|s| s.parse::<std::net::IpAddr>().is_err())
        {
            errs.push(format!("{at}: {v} is not an IP address"));
        }
        if let (Some(r), Some(n)) = (range.as_array(), v.as_i64())
            && r.len() == 2
            && (n < r[0].as_i64().unwrap_or(i64::MIN) || n > r[1].as_i64().unwrap_or(i64::MAX))
        {
            errs.push(format!("{at}: {n} out of range {r:?}"));
        }
    }
}

/// A child's attribute spec over its parent's (keys it sets win).
fn merge(attrs: &mut Map<String, Value>, k: String, spec: Value) {
    match (attrs.get_mut(&k), spec) {
        (Some(Value::Object(old)), Value::Object(new)) => {
            for (nk, nv) in new {
                old.insert(nk, nv);
            }
        }
        (_, spec) => {
            attrs.insert(k, spec);
        }
    }
}
