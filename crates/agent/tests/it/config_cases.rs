//! The configuration engine driven by a table of documents and the exact problem lines they
//! must produce; the generated JSON Schema must agree with the validator on every case; the
//! duration parser must agree with the official pattern (an independent oracle).

use fancy_regex::Regex;
use proptest::prelude::*;
use serde_json::Value;
use twinguard_core::config::{
    is_grammatical, json_schema, read_document, validate_document, IsoDuration, CONFIG_KEY,
};

use crate::support::{shared_dir, skip};

/// (case name, document, expected problem lines as `severity: pointer: message`).
/// An empty list means valid without warnings.
fn cases() -> Vec<(&'static str, String, Vec<&'static str>)> {
    let k = CONFIG_KEY;
    vec![
        ("empty object", "{}".into(), vec![]),
        ("null object", format!(r#"{{"{k}": null}}"#), vec![]),
        ("empty wrapper is default", r#"{"snapshotFrequency": {}}"#.into(), vec![]),
        ("null member is default", r#"{"snapshotFrequency": null}"#.into(), vec![]),
        ("seed example corrected", format!(r#"{{"desired": {{"{k}": {{"highPriorityMessageFrequency": {{"value": "PT7M"}}, "eventPriorityConnectionCreate": {{"value": "High"}}}}}}}}"#), vec![]),
        ("full twin shape", format!(r#"{{"moduleId": "azureiotsecurity", "properties": {{"desired": {{"{k}": {{"snapshotFrequency": {{"value": "P1DT2H"}}}}, "$version": 4, "$metadata": {{}}}}, "reported": {{}}}}}}"#), vec![]),
        ("desired section shape", format!(r#"{{"{k}": {{"maxMessageSizeInBytes": {{"value": 8192}}}}}}"#), vec![]),
        ("value null", r#"{"highPriorityMessageFrequency": {"value": null}}"#.into(),
            vec![r#"error: /highPriorityMessageFrequency/value: expected an ISO 8601 duration like "PT7M", found null"#]),
        ("seed wording of a duration", r#"{"highPriorityMessageFrequency": {"value": "7 minutes"}}"#.into(),
            vec![r#"error: /highPriorityMessageFrequency/value: expected an ISO 8601 duration like "PT7M", found "7 minutes" (must start with an upper-case P)"#]),
        ("lower-case duration", r#"{"lowPriorityMessageFrequency": {"value": "pt7m"}}"#.into(),
            vec![r#"error: /lowPriorityMessageFrequency/value: expected an ISO 8601 duration like "PT7M", found "pt7m"; did you mean "PT7M"?"#]),
        ("PT", r#"{"snapshotFrequency": {"value": "PT"}}"#.into(),
            vec![r#"error: /snapshotFrequency/value: expected an ISO 8601 duration like "PT7M", found "PT" (T must be followed by a time component)"#]),
        ("P", r#"{"snapshotFrequency": {"value": "P"}}"#.into(),
            vec![r#"error: /snapshotFrequency/value: expected an ISO 8601 duration like "PT7M", found "P" (needs at least one component)"#]),
        ("PT0S", r#"{"snapshotFrequency": {"value": "PT0S"}}"#.into(),
            vec![r#"error: /snapshotFrequency/value: expected a duration longer than zero, found "PT0S""#]),
        ("negative duration", r#"{"snapshotFrequency": {"value": "-PT5M"}}"#.into(),
            vec![r#"error: /snapshotFrequency/value: expected an ISO 8601 duration like "PT7M", found "-PT5M" (must start with an upper-case P)"#]),
        ("fraction not last", r#"{"aggregationIntervalProcessCreate": {"value": "PT1.5H30M"}}"#.into(),
            vec![r#"error: /aggregationIntervalProcessCreate/value: expected an ISO 8601 duration like "PT7M", found "PT1.5H30M" (only the last component may have a fraction)"#]),
        ("fraction last", r#"{"aggregationIntervalProcessCreate": {"value": "PT1H30.5M"}}"#.into(), vec![]),
        ("duration as number", r#"{"snapshotFrequency": {"value": 60}}"#.into(),
            vec![r#"error: /snapshotFrequency/value: expected an ISO 8601 duration like "PT7M", found 60"#]),
        ("sub-second duration", r#"{"highPriorityMessageFrequency": {"value": "PT0.5S"}}"#.into(),
            vec![r#"warning: /highPriorityMessageFrequency: "PT0.5S" is shorter than one second: timers run at most once per second"#]),
        ("lower-case priority", r#"{"eventPriorityLogin": {"value": "high"}}"#.into(),
            vec![r#"error: /eventPriorityLogin/value: expected "High", "Low" or "Off" (case-sensitive), found "high"; did you mean "High"?"#]),
        ("priority as number", r#"{"eventPriorityLogin": {"value": 1}}"#.into(),
            vec![r#"error: /eventPriorityLogin/value: expected "High", "Low" or "Off", found 1"#]),
        ("unwrapped value", r#"{"eventPriorityLogin": "High"}"#.into(),
            vec![r#"error: /eventPriorityLogin: expected an object like {"value": "High"}, found "High""#]),
        ("wrapper is an array", r#"{"maxMessageSizeInBytes": [8192]}"#.into(),
            vec![r#"error: /maxMessageSizeInBytes: expected an object like {"value": 204800}, found an array"#]),
        ("number as string", r#"{"maxMessageSizeInBytes": {"value": "8192"}}"#.into(),
            vec![r#"error: /maxMessageSizeInBytes/value: expected an integer from 8192 to 262144, found "8192""#]),
        ("integer written with .0", r#"{"maxMessageSizeInBytes": {"value": 8192.0}}"#.into(), vec![]),
        ("fractional size", r#"{"maxMessageSizeInBytes": {"value": 8192.5}}"#.into(),
            vec![r#"error: /maxMessageSizeInBytes/value: expected an integer from 8192 to 262144, found 8192.5, which has a fractional part"#]),
        ("message size lower bound", r#"{"maxMessageSizeInBytes": {"value": 8192}}"#.into(), vec![]),
        ("message size upper bound", r#"{"maxMessageSizeInBytes": {"value": 262144}, "maxLocalCacheSizeInBytes": {"value": 262144}}"#.into(), vec![]),
        ("message size below", r#"{"maxMessageSizeInBytes": {"value": 8191}}"#.into(),
            vec![r#"error: /maxMessageSizeInBytes/value: expected an integer from 8192 to 262144, found 8191"#]),
        ("message size above", r#"{"maxMessageSizeInBytes": {"value": 262145}}"#.into(),
            vec![r#"error: /maxMessageSizeInBytes/value: expected an integer from 8192 to 262144, found 262145"#]),
        ("cache lower bound", r#"{"maxLocalCacheSizeInBytes": {"value": 8192}, "maxMessageSizeInBytes": {"value": 8192}}"#.into(), vec![]),
        ("negative cache", r#"{"maxLocalCacheSizeInBytes": {"value": -1}}"#.into(),
            vec![r#"error: /maxLocalCacheSizeInBytes/value: expected an integer of at least 8192, found -1"#]),
        ("huge integer", r#"{"maxMessageSizeInBytes": {"value": 99999999999999999999999}}"#.into(),
            vec![r#"error: /maxMessageSizeInBytes/value: expected an integer from 8192 to 262144, found 1e+23"#]),
        ("boolean as string", r#"{"aggregationEnabledProcessCreate": {"value": "true"}}"#.into(),
            vec![r#"error: /aggregationEnabledProcessCreate/value: expected true or false, found "true""#]),
        ("object not an object", format!(r#"{{"{k}": "PT7M"}}"#),
            vec![r#"error: /ms_iotn:urn_azureiot_Security_SecurityAgentConfiguration: expected the configuration object to be a JSON object, found "PT7M""#]),
        ("document is an array", "[1, 2]".into(), vec!["error: expected a JSON object, found an array"]),
        ("desired is a string", r#"{"desired": "x"}"#.into(), vec![r#"error: /desired: expected a JSON object, found "x""#]),
        ("unknown property with hint", r#"{"eventPriorityLogins": {"value": "High"}}"#.into(),
            vec![r#"warning: /eventPriorityLogins: unknown property "eventPriorityLogins" is ignored; did you mean "eventPriorityLogin"?"#]),
        ("wrongly cased property", r#"{"SnapshotFrequency": {"value": "PT1H"}}"#.into(),
            vec![r#"warning: /SnapshotFrequency: unknown property "SnapshotFrequency" is ignored; did you mean "snapshotFrequency"?"#]),
        ("misspelt value key", r#"{"snapshotFrequency": {"Value": "PT1H"}}"#.into(),
            vec![r#"warning: /snapshotFrequency/Value: unknown member "Value" is ignored; did you mean "value"?"#]),
        ("conflict cache smaller than message", r#"{"maxLocalCacheSizeInBytes": {"value": 8192}}"#.into(), vec![
            "warning: /maxLocalCacheSizeInBytes: maxLocalCacheSizeInBytes (8192) is smaller than maxMessageSizeInBytes (204800): a message can never be full",
            "warning: /maxMessageSizeInBytes: maxLocalCacheSizeInBytes (8192) is smaller than maxMessageSizeInBytes (204800): a message can never be full",
        ]),
        ("conflict high slower than low", r#"{"highPriorityMessageFrequency": {"value": "PT6H"}}"#.into(), vec![
            "warning: /highPriorityMessageFrequency: highPriorityMessageFrequency (PT6H) is longer than lowPriorityMessageFrequency (PT5H): High events would wait longer than Low ones",
            "warning: /lowPriorityMessageFrequency: highPriorityMessageFrequency (PT6H) is longer than lowPriorityMessageFrequency (PT5H): High events would wait longer than Low ones",
        ]),
        ("not a multiple of 4096", r#"{"maxMessageSizeInBytes": {"value": 10000}}"#.into(),
            vec!["warning: /maxMessageSizeInBytes: 10000 is not a multiple of 4096: IoT Hub bills messages in 4 KB units"]),
        ("all errors reported", r#"{"snapshotFrequency": {"value": "x"}, "eventPriorityLogin": {"value": "LOW"}, "maxMessageSizeInBytes": {"value": true}, "eventPriorityLogn": {}}"#.into(), vec![
            r#"error: /snapshotFrequency/value: expected an ISO 8601 duration like "PT7M", found "x" (must start with an upper-case P)"#,
            r#"error: /eventPriorityLogin/value: expected "High", "Low" or "Off" (case-sensitive), found "LOW"; did you mean "Low"?"#,
            "error: /maxMessageSizeInBytes/value: expected an integer from 8192 to 262144, found true",
            r#"warning: /eventPriorityLogn: unknown property "eventPriorityLogn" is ignored; did you mean "eventPriorityLogin"?"#,
        ]),
        ("full twin pointer", format!(r#"{{"properties": {{"desired": {{"{k}": {{"eventPriorityLogin": {{"value": "on"}}}}}}}}}}"#),
            vec![r#"error: /properties/desired/ms_iotn:urn_azureiot_Security_SecurityAgentConfiguration/eventPriorityLogin/value: expected "High", "Low" or "Off" (case-sensitive), found "on""#]),
    ]
}

fn lines(doc: &Value) -> Vec<String> {
    validate_document(doc)
        .problems
        .iter()
        .map(|p| format!("{}: {p}", p.severity.as_str()))
        .collect()
}

#[test]
fn validation_table() {
    let mut failures = Vec::new();
    for (name, text, expected) in cases() {
        let doc = read_document(text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = lines(&doc);
        if got != expected {
            failures.push(format!("{name}:\n  expected {expected:#?}\n  got      {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn generated_schema_agrees_with_validate_on_every_case() {
    let schema = json_schema();
    let validator = jsonschema::draft7::new(&schema).unwrap();
    for (name, text, _) in cases() {
        let doc = read_document(text.as_bytes()).unwrap();
        let located = twinguard_core::config::locate(&doc);
        if !located.shape_errors.is_empty() {
            continue; // The schema describes the configuration object, not the wrappers.
        }
        let object = located.object.cloned().unwrap_or(Value::Null);
        let ours = validate_document(&doc).is_valid();
        let theirs = validator.is_valid(&object);
        assert_eq!(
            ours, theirs,
            "{name}: validate says {ours}, the generated schema says {theirs}"
        );
    }
}

#[test]
fn official_default_twin_validates_and_round_trips() {
    let Some(shared) = shared_dir() else {
        return skip(
            "official_default_twin_validates_and_round_trips",
            "../shared not found",
        );
    };
    let path = shared.join("reference/azure-iot-security/security_module_twin/azureiotsecurity_default.json");
    let doc = read_document(&std::fs::read(path).unwrap()).unwrap();
    let v = validate_document(&doc);
    assert!(v.is_valid(), "{:?}", v.problems);
    // The official default twin says Diagnostic is Low (the seed says Off): echoed as set.
    let section = v.config.unwrap().to_desired_section();
    let desired = &doc["properties"]["desired"][CONFIG_KEY];
    for (name, wrapper) in desired.as_object().unwrap() {
        assert_eq!(&section[CONFIG_KEY][name], wrapper, "{name}");
    }
}

/// The official `TimeConfiguration` pattern (a fact of the published schema).
const OFFICIAL_PATTERN: &str = r"^P(?!$)((\d+Y)|(\d+\.\d+Y$))?((\d+M)|(\d+\.\d+M$))?((\d+W)|(\d+\.\d+W$))?((\d+D)|(\d+\.\d+D$))?(T(?=\d)((\d+H)|(\d+\.\d+H$))?((\d+M)|(\d+\.\d+M$))?(\d+(\.\d+)?S)?)??$";

fn official_regex() -> Regex {
    if let Some(shared) = shared_dir() {
        let path = shared.join(
            "reference/azure-iot-security/security_module_twin/azureiotsecurity_schema_definitions.json",
        );
        let defs: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let pattern = defs["definitions"]["TimeConfiguration"]["properties"]["value"]["pattern"]
            .as_str()
            .unwrap();
        assert_eq!(pattern, OFFICIAL_PATTERN, "the official pattern changed");
    }
    Regex::new(OFFICIAL_PATTERN).unwrap()
}

/// Checks one string against the oracle: same grammar; valid = grammatical and non-zero.
fn agree(re: &Regex, s: &str) -> Result<(), String> {
    let official = re.is_match(s).unwrap();
    if is_grammatical(s) != official {
        return Err(format!(
            "{s:?}: official pattern says {official}, our grammar says {}",
            !official
        ));
    }
    let nonzero = s.bytes().any(|b| (b'1'..=b'9').contains(&b));
    if IsoDuration::parse(s).is_ok() != (official && nonzero) {
        return Err(format!("{s:?}: parse disagrees with pattern && non-zero"));
    }
    Ok(())
}

#[test]
fn duration_grammar_matches_the_official_pattern_exhaustively() {
    // Every sequence of up to 5 tokens: covers orders, repeats, fractions and misplaced T.
    let re = official_regex();
    let tokens = ["P", "T", "1", "0", "2.5", ".", "Y", "M", "W", "D", "H", "S", "p"];
    let mut frontier = vec![String::new()];
    let mut checked = 0;
    for _ in 0..5 {
        let mut next = Vec::new();
        for prefix in &frontier {
            for t in tokens {
                let s = format!("{prefix}{t}");
                agree(&re, &s).unwrap();
                checked += 1;
                next.push(s);
            }
        }
        frontier = next;
    }
    agree(&re, "").unwrap();
    assert!(checked > 300_000);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn duration_grammar_matches_the_official_pattern_on_random_strings(s in "P?T?[0-9.YMWDHST]{0,14}") {
        let re = official_regex();
        prop_assert!(agree(&re, &s).is_ok(), "{}", agree(&re, &s).unwrap_err());
    }

    #[test]
    fn durations_built_from_components_parse(
        parts in proptest::collection::vec((0u64..1000, proptest::bool::ANY), 7),
        frac in 0u64..100,
    ) {
        // Build a grammatical string with a random subset of components.
        let designators = ["Y", "M", "W", "D", "H", "M", "S"];
        let mut s = String::from("P");
        let mut last = None;
        for (i, (n, used)) in parts.iter().enumerate() {
            if i == 4 { s.push('T'); }
            if *used { s.push_str(&format!("{n}{}", designators[i])); last = Some(i); }
        }
        if s.ends_with('T') { s.pop(); }
        if last.is_some() && frac > 0 {
            let d = s.pop().unwrap();
            s.push_str(&format!(".{frac}{d}"));
        }
        let re = official_regex();
        prop_assert!(agree(&re, &s).is_ok(), "{}", agree(&re, &s).unwrap_err());
    }

    #[test]
    fn validation_never_panics_on_arbitrary_json(doc in arbitrary_json()) {
        let v = validate_document(&doc);
        prop_assert_eq!(v.is_valid(), v.config.is_some());
        let wrapped = serde_json::json!({ CONFIG_KEY: doc });
        let _ = validate_document(&wrapped);
    }
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let names: Vec<String> = twinguard_core::config::Property::all()
        .iter()
        .map(|p| p.name())
        .collect();
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[PTYMWDHSLowigh0-9. ]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        let key = prop_oneof![
            proptest::sample::select(names.clone()),
            Just("value".to_owned()),
            "[a-zA-Z$]{0,6}",
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((key, inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}
