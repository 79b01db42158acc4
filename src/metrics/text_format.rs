//! A strict little parser of the Prometheus text format 0.0.4: what the unit tests use to
//! check that the output round-trips, and what integration tests can use to check a scrape of
//! `GET /metrics/prometheus` after known traffic.

use std::collections::{BTreeMap, HashMap};

/// One parsed sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Sample name (a histogram's `_bucket`/`_sum`/`_count` suffix included).
    pub name: String,
    /// Labels, escapes resolved.
    pub labels: BTreeMap<String, String>,
    /// The value (`+Inf`/`-Inf` as infinities).
    pub value: f64,
}

/// A strict little parser of text format 0.0.4: returns the samples and each family's
/// TYPE, and fails on anything malformed (a sample before its TYPE, a duplicate TYPE, a bad
/// escape, an unparsable value).
pub fn parse(text: &str) -> Result<(Vec<Sample>, HashMap<String, String>), String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let err = |m: &str| format!("line {}: {m}: {line}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').ok_or_else(|| err("HELP"))?;
            if helps.insert(name.into(), help.into()).is_some() {
                return Err(err("duplicate HELP"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').ok_or_else(|| err("TYPE"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty) {
                return Err(err("unknown type"));
            }
            if types.insert(name.into(), ty.into()).is_some() {
                return Err(err("duplicate TYPE"));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| err("no value"))?;
        let name = &line[..name_end];
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(err("bad name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let mut consumed = None;
            loop {
                // label name
                let mut lname = String::new();
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    if c == '}' && lname.is_empty() {
                        consumed = Some(i + 1);
                        break;
                    }
                    lname.push(c);
                }
                if consumed.is_some() {
                    break;
                }
                if chars.next().map(|x| x.1) != Some('"') {
                    return Err(err("label value must be quoted"));
                }
                let mut v = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => v.push('\\'),
                            Some((_, '"')) => v.push('"'),
                            Some((_, 'n')) => v.push('\n'),
                            _ => return Err(err("bad escape")),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => v.push(c),
                        None => return Err(err("unterminated label value")),
                    }
                }
                labels.insert(lname, v);
                match chars.next() {
                    Some((_, ',')) => continue,
                    Some((i, '}')) => {
                        consumed = Some(i + 1);
                        break;
                    }
                    _ => return Err(err("expected , or }")),
                }
            }
            rest = &r[consumed.ok_or_else(|| err("labels"))?..];
        }
        let value = rest.trim();
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse::<f64>().map_err(|_| err("bad value"))?,
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) || !helps.contains_key(family) {
            return Err(err("sample before its HELP/TYPE"));
        }
        samples.push(Sample {
            name: name.into(),
            labels,
            value,
        });
    }
    Ok((samples, types))
}

/// The value of the first sample named `name` carrying all of `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_text_is_refused() {
        let ok = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\\\"\\n\"} 1\n";
        let (s, _) = parse(ok).expect("valid");
        assert_eq!(s[0].labels["k"], "v\"\n");
        for bad in [
            "a_total 1\n",                                           // no HELP/TYPE
            "# HELP a x\n# TYPE a counter\n# TYPE a counter\na 1\n", // duplicate TYPE
            "# HELP a x\n# TYPE a counter\na{k=v} 1\n",              // unquoted value
            "# HELP a x\n# TYPE a counter\na{k=\"\\x\"} 1\n",        // bad escape
            "# HELP a x\n# TYPE a counter\na one\n",                 // bad value
            "# HELP a x\n# TYPE a thing\na 1\n",                     // unknown type
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
