//! JSON schemas that probe the limits of structured output (`constraint::check_schema`), shared by the
//! engine's, the server's and the fuzz crate's tests.

use serde_json::{json, Map, Value};

/// `links` `$defs` each naming the next through a required property, then a string:
/// `{"$defs": {"d0": {"type": "object", "properties": {"a": {"$ref": "#/$defs/d1"}}, ...}, ...,
/// "dN": {"type": "string"}}, "$ref": "#/$defs/d0"}`. Flat JSON (5 levels, which serde_json's nesting
/// limit lets through), yet llguidance's compiler recurses through every link. Its depth as
/// `constraint::schema_depth` counts it is 4·links + 7 (links ≥ 1): the root nests 5 levels, each of
/// the links + 1 distinct `$ref`s adds 1 + the nesting of its def (3 for a link, 1 for the string).
pub fn ref_chain(links: usize) -> Value {
    let mut defs = Map::new();
    for i in 0..links {
        defs.insert(
            format!("d{i}"),
            json!({"type": "object", "properties": {"a": {"$ref": format!("#/$defs/d{}", i + 1)}},
                   "required": ["a"]}),
        );
    }
    defs.insert(format!("d{links}"), json!({"type": "string"}));
    json!({"$defs": defs, "$ref": "#/$defs/d0"})
}
