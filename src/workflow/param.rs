//! Declared workflow parameters: their types, defaults and bounds, and the checks a
//! submitted value must pass.

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value, json};

/// Longest prompt (and any string parameter without its own limit), in characters.
/// CLIP-based models read far fewer tokens; this bounds request size and storage.
pub const MAX_STRING_CHARS: usize = 10_000;

/// A character the server does not count as blank (Rust's whitespace and the
/// information separators U+001C–U+001F), spelled out: `\\S` means different sets
/// in ECMAScript, Python and Rust.
pub const NOT_BLANK: &str = "[^\\t\\n\\u000b\\f\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

/// The type of a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    String,
    Int,
    Float,
    Bool,
    Enum,
    /// An input picture: an `upload_id` from `POST /api/uploads` (or, in a
    /// submission, a small `data:` URL, stored as an upload first). The worker
    /// puts the file on the backend and writes the name ComfyUI gave it.
    Image,
    /// A mask picture (white: the part to change), given as an image is.
    Mask,
}

impl ParamKind {
    /// Whether values are uploads.
    pub fn is_picture(self) -> bool {
        matches!(self, ParamKind::Image | ParamKind::Mask)
    }
}

/// A transformation applied to a value before it is written into a node input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    /// `value mod 2^24`: turns a 64-bit seed into an RGB colour (EmptyImage `color`).
    Rgb24,
}

/// One place in the graph a parameter sets: `graph[node].inputs[input]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub node: String,
    pub input: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<Transform>,
}

/// A parameter as declared in a template file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(rename = "type")]
    pub kind: ParamKind,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Target>,
}

/// A value that failed its parameter's checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamError {
    pub message: String,
}

fn err(message: impl Into<String>) -> ParamError {
    ParamError {
        message: message.into(),
    }
}

impl ParamSpec {
    /// This parameter as JSON Schema (the API document's request bodies, the MCP
    /// tools' input schemas): its type or `null`, its bounds, its default.
    pub fn json_schema(&self, name: &str) -> Value {
        let spec = self;
        let mut s = match spec.kind {
            ParamKind::String => {
                let limit = spec.max_length.unwrap_or(MAX_STRING_CHARS);
                json!({"type": ["string", "null"], "maxLength": limit})
            }
            ParamKind::Int => json!({"type": ["integer", "null"]}),
            ParamKind::Float => json!({"type": ["number", "null"]}),
            ParamKind::Bool => json!({"type": ["boolean", "null"]}),
            ParamKind::Image | ParamKind::Mask if spec.default.is_none() => json!({
                "type": "string",
                "pattern": "^([0-9a-f]{64}|data:image/(png|jpeg|webp);base64,.*)$",
                "x-studio-upload": true,
            }),
            ParamKind::Image | ParamKind::Mask => json!({
                "type": ["string", "null"],
                "pattern": "^([0-9a-f]{64}|data:image/(png|jpeg|webp);base64,.*)$",
                "x-studio-upload": true,
            }),
            ParamKind::Enum => {
                let mut choices: Vec<Value> = spec.choices.iter().map(|c| json!(c)).collect();
                choices.push(Value::Null);
                json!({"enum": choices})
            }
        };
        let o = s.as_object_mut().expect("an object");
        if matches!(spec.kind, ParamKind::Int | ParamKind::Float) {
            if let Some(min) = &spec.min {
                o.insert("minimum".into(), Value::Number(min.clone()));
            }
            if let Some(max) = &spec.max {
                o.insert("maximum".into(), Value::Number(max.clone()));
            }
        }
        if name == "prompt" {
            // Required, so not null; something other than whitespace.
            o.insert("type".into(), json!("string"));
            o.insert("minLength".into(), json!(1));
            o.insert("pattern".into(), json!(NOT_BLANK));
        }
        if !spec.description.is_empty() {
            o.insert("description".into(), json!(spec.description));
        }
        if let Some(d) = &spec.default {
            o.insert("default".into(), d.clone());
        }
        s
    }

    /// Checks `value` against the declaration and returns it in canonical form
    /// (integers as JSON integers, floats as JSON floats).
    pub fn check(&self, value: &Value) -> Result<Value, ParamError> {
        match self.kind {
            ParamKind::String => {
                let s = value.as_str().ok_or_else(|| err("must be a string"))?;
                let limit = self.max_length.unwrap_or(MAX_STRING_CHARS);
                let n = s.chars().count();
                if n > limit {
                    return Err(err(format!("must be at most {limit} characters (got {n})")));
                }
                Ok(value.clone())
            }
            ParamKind::Int => {
                let n = value.as_number().ok_or_else(|| err("must be an integer"))?;
                let i = as_i128(n).ok_or_else(|| err("must be an integer"))?;
                let (min, max) = (self.min.as_ref(), self.max.as_ref());
                if min.and_then(as_i128).is_some_and(|m| i < m)
                    || max.and_then(as_i128).is_some_and(|m| i > m)
                {
                    return Err(err(self.bounds_message()));
                }
                // Canonical: an integer, whether it came as 2 or as 2.0.
                if let Ok(u) = u64::try_from(i) {
                    Ok(Value::from(u))
                } else {
                    i64::try_from(i)
                        .map(Value::from)
                        .map_err(|_| err("must be an integer from -2^63 to 2^64-1"))
                }
            }
            ParamKind::Float => {
                let f = value
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| err("must be a number"))?;
                if self
                    .min
                    .as_ref()
                    .and_then(Number::as_f64)
                    .is_some_and(|m| f < m)
                    || self
                        .max
                        .as_ref()
                        .and_then(Number::as_f64)
                        .is_some_and(|m| f > m)
                {
                    return Err(err(self.bounds_message()));
                }
                Ok(Value::from(f))
            }
            ParamKind::Bool => value
                .as_bool()
                .map(Value::Bool)
                .ok_or_else(|| err("must be true or false")),
            ParamKind::Image | ParamKind::Mask => {
                let s = value
                    .as_str()
                    .ok_or_else(|| err("must be an upload_id (from POST /api/uploads)"))?;
                if crate::uploads::is_upload_id(s) {
                    Ok(value.clone())
                } else {
                    Err(err(
                        "must be an upload_id (64 hex digits, from POST /api/uploads) or a data:image/…;base64 URL",
                    ))
                }
            }
            ParamKind::Enum => {
                let s = value.as_str().ok_or_else(|| err("must be a string"))?;
                if self.choices.iter().any(|c| c == s) {
                    Ok(value.clone())
                } else {
                    Err(err(format!("must be one of: {}", self.choices.join(", "))))
                }
            }
        }
    }

    fn bounds_message(&self) -> String {
        let what = if self.kind == ParamKind::Int {
            "an integer"
        } else {
            "a number"
        };
        match (&self.min, &self.max) {
            (Some(a), Some(b)) => format!("must be {what} from {a} to {b}"),
            (Some(a), None) => format!("must be {what} of at least {a}"),
            (None, Some(b)) => format!("must be {what} of at most {b}"),
            (None, None) => format!("must be {what}"),
        }
    }

    /// Writes `value` into the graph at every target.
    pub fn apply(&self, graph: &mut Value, value: &Value) {
        for t in &self.targets {
            let v = match t.transform {
                Some(Transform::Rgb24) => value
                    .as_u64()
                    .map(|u| Value::from(u % (1 << 24)))
                    .unwrap_or_else(|| value.clone()),
                None => value.clone(),
            };
            if let Some(inputs) = graph
                .get_mut(&t.node)
                .and_then(|n| n.get_mut("inputs"))
                .and_then(Value::as_object_mut)
            {
                inputs.insert(t.input.clone(), v);
            }
        }
    }
}

/// A JSON value as a whole number from 0 to 2^64 − 1, in any spelling JSON
/// Schema calls an integer (`5`, `5.0`).
pub fn as_whole(v: &Value) -> Option<u64> {
    v.as_number()
        .and_then(as_i128)
        .and_then(|n| u64::try_from(n).ok())
}

/// A JSON number as an integer, if it is one: as JSON Schema says it, any number
/// without a fractional part (`2.0` is 2), of magnitude below 2^64.
pub fn as_i128(n: &Number) -> Option<i128> {
    n.as_u64()
        .map(i128::from)
        .or_else(|| n.as_i64().map(i128::from))
        .or_else(|| {
            n.as_f64()
                .filter(|f| {
                    f.is_finite() && f.fract() == 0.0 && f.abs() < 18_446_744_073_709_551_616.0
                })
                .map(|f| f as i128)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> ParamSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn integers_are_checked_for_type_and_bounds() {
        let s = spec(json!({"type": "int", "min": 1, "max": 150}));
        assert_eq!(s.check(&json!(20)), Ok(json!(20)));
        assert!(
            s.check(&json!(0))
                .unwrap_err()
                .message
                .contains("from 1 to 150")
        );
        assert!(s.check(&json!(151)).is_err());
        assert_eq!(
            s.check(&json!(2.5)).unwrap_err().message,
            "must be an integer"
        );
        assert_eq!(s.check(&json!(20.0)), Ok(json!(20)), "2.0 is an integer");
        assert!(s.check(&json!(1e300)).is_err());
        assert!(s.check(&json!("20")).is_err());
    }

    #[test]
    fn a_64_bit_seed_fits() {
        let s = spec(json!({"type": "int", "min": 0, "max": 18446744073709551615u64}));
        assert!(s.check(&json!(u64::MAX)).is_ok());
        assert!(s.check(&json!(-1)).is_err());
    }

    #[test]
    fn floats_enums_bools_and_strings() {
        let f = spec(json!({"type": "float", "min": 0.0, "max": 30.0}));
        assert_eq!(f.check(&json!(7)), Ok(json!(7.0)));
        assert!(f.check(&json!(30.5)).is_err());
        let e = spec(json!({"type": "enum", "choices": ["euler", "dpmpp_2m"]}));
        assert!(e.check(&json!("euler")).is_ok());
        assert!(
            e.check(&json!("bogus"))
                .unwrap_err()
                .message
                .contains("euler, dpmpp_2m")
        );
        let b = spec(json!({"type": "bool"}));
        assert!(b.check(&json!(1)).is_err());
        let s = spec(json!({"type": "string", "max_length": 3}));
        assert!(s.check(&json!("äöü")).is_ok());
        assert!(s.check(&json!("abcd")).is_err());
    }

    #[test]
    fn rgb24_transform_takes_the_low_24_bits() {
        let s = spec(
            json!({"type": "int", "targets": [{"node": "1", "input": "color", "transform": "rgb24"}]}),
        );
        let mut g = json!({"1": {"class_type": "EmptyImage", "inputs": {"color": 0}}});
        s.apply(&mut g, &json!(0x1234_5678_9abc_u64));
        assert_eq!(g["1"]["inputs"]["color"], json!(0x789abc));
    }
}
