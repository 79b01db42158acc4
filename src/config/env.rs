//! Environment variables for the config file: `${NAME}` interpolation and `.env` files.
//!
//! Interpolation is deliberately small, so that a config means the same thing everywhere:
//! only `${NAME}` with `NAME` matching `[A-Za-z_][A-Za-z0-9_]*`, no `${NAME:-default}`, no
//! escape, and a bare `$NAME` is left as it is. A whole string `os.environ/NAME` (LiteLLM style)
//! is replaced by the variable. A variable that is missing, empty or only whitespace is an error:
//! a gateway that starts with `Authorization: Bearer ` and no key fails every request later, far
//! from the cause. Replaced text is never scanned again, so a value containing `${` is inserted
//! verbatim.
//!
//! The `.env` reader accepts what people write in such files: blank lines, `#` comments,
//! `export KEY=VALUE`, unquoted values (trimmed, a ` # comment` after them dropped), single
//! quotes (literal) and double quotes (with `\n`, `\r`, `\t`, `\"`, `\\` and `\$` escapes);
//! quoted values may span lines. It does not expand variables inside values. Anything else is an
//! error naming the line, instead of a key silently missing later.

use std::path::Path;

/// The prefix of the LiteLLM-style whole-string reference `os.environ/NAME`.
const OS_ENVIRON_PREFIX: &str = "os.environ/";

/// Replace every `${NAME}` in `s` (or the whole string `os.environ/NAME`) with the variable
/// `lookup` finds.
///
/// The error message names the variable (or quotes the bad placeholder); the caller adds the
/// field path.
pub fn interpolate(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    // The original trims around the LiteLLM form, so `" os.environ/KEY "` works there too.
    if let Some(name) = s.trim().strip_prefix(OS_ENVIRON_PREFIX) {
        if !is_var_name(name) {
            return Err(format!(
                "invalid variable name {name:?} in `{OS_ENVIRON_PREFIX}NAME` \
                 (expected [A-Za-z_][A-Za-z0-9_]*)"
            ));
        }
        return resolve(name, lookup);
    }

    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!(
                "unterminated `${{` (no closing `}}`) in {:?}",
                shorten(&rest[start..])
            ));
        };
        let name = &after[..end];
        if !is_var_name(name) {
            return Err(format!(
                "invalid variable name {name:?} in `${{...}}` (expected [A-Za-z_][A-Za-z0-9_]*)"
            ));
        }
        out.push_str(&resolve(name, lookup)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Look a variable up, refusing missing and blank values.
fn resolve(name: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    match lookup(name) {
        None => Err(format!("environment variable {name} is not set")),
        Some(v) if v.trim().is_empty() => Err(format!(
            "environment variable {name} is empty (or only whitespace)"
        )),
        Some(v) => Ok(v),
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`: the names `${...}` accepts and `.env` keys must have.
pub(crate) fn is_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Keep error messages readable when the offending text is long (and it may hold secrets).
fn shorten(s: &str) -> String {
    const MAX: usize = 24;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Read a `.env` file. Errors start with the path; parse errors name the line.
pub fn load_dotenv(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse_dotenv(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parse `.env` text into `(KEY, value)` pairs in file order (a key set twice appears twice;
/// the later one should win).
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Lines are numbered from 1 and `\r\n` endings are accepted.
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let lineno = i + 1;
        let line = lines[i].trim_start();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = match line.strip_prefix("export") {
            Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
            _ => line,
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {lineno}: expected KEY=VALUE"));
        };
        let key = key.trim_end();
        if !is_var_name(key) {
            return Err(format!(
                "line {lineno}: invalid variable name {key:?} (expected [A-Za-z_][A-Za-z0-9_]*)"
            ));
        }
        let raw_value = value;
        let value = value.trim_start();
        let parsed = match value.chars().next() {
            Some(q @ ('"' | '\'')) => {
                // A quoted value may continue on the following lines until its closing quote.
                let mut body = value[1..].to_string();
                loop {
                    if let Some((v, tail)) = take_quoted(&body, q) {
                        let tail = tail.trim_start();
                        if !(tail.is_empty() || tail.starts_with('#')) {
                            return Err(format!(
                                "line {}: unexpected text after the closing quote",
                                i
                            ));
                        }
                        break v;
                    }
                    if i >= lines.len() {
                        return Err(format!(
                            "line {lineno}: unterminated {} quote",
                            if q == '"' { "double" } else { "single" }
                        ));
                    }
                    body.push('\n');
                    body.push_str(lines[i]);
                    i += 1;
                }
            }
            _ => unquoted_value(raw_value).to_string(),
        };
        out.push((key.to_string(), parsed));
    }
    Ok(out)
}

/// If `body` (the text after an opening `q`) holds the closing quote, return the decoded value
/// and the text after the quote.
fn take_quoted(body: &str, q: char) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((idx, c)) = chars.next() {
        if c == q {
            return Some((value, &body[idx + 1..]));
        }
        if c == '\\' && q == '"' {
            match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, 'r')) => value.push('\r'),
                Some((_, 't')) => value.push('\t'),
                Some((_, e @ ('"' | '\\' | '$'))) => value.push(e),
                // Unknown escapes stay as written, as in a shell's double quotes.
                Some((_, other)) => {
                    value.push('\\');
                    value.push(other);
                }
                None => value.push('\\'),
            }
            continue;
        }
        value.push(c);
    }
    None
}

/// An unquoted value (the text right after `=`): trimmed, and a comment after whitespace
/// (` # ...`) removed. A `#` with no space before it is part of the value (`PASS=#x`,
/// `URL=https://h/#frag`).
fn unquoted_value(value: &str) -> &str {
    let bytes = value.as_bytes();
    let mut end = bytes.len();
    for (idx, &b) in bytes.iter().enumerate() {
        if b == b'#' && idx > 0 && (bytes[idx - 1] == b' ' || bytes[idx - 1] == b'\t') {
            end = idx;
            break;
        }
    }
    value[..end].trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn interpolate_replaces_placeholders_anywhere() {
        let e = env(&[("KEY", "sk-1"), ("HOST", "h.example")]);
        assert_eq!(interpolate("Bearer ${KEY}", &e).unwrap(), "Bearer sk-1");
        assert_eq!(
            interpolate("https://${HOST}/v1?k=${KEY}", &e).unwrap(),
            "https://h.example/v1?k=sk-1"
        );
        assert_eq!(interpolate("${KEY}${KEY}", &e).unwrap(), "sk-1sk-1");
        assert_eq!(interpolate("", &e).unwrap(), "");
        assert_eq!(interpolate("plain", &e).unwrap(), "plain");
    }

    #[test]
    fn interpolate_leaves_bare_dollar_and_braces_alone() {
        let e = env(&[("KEY", "v")]);
        assert_eq!(interpolate("$KEY", &e).unwrap(), "$KEY");
        assert_eq!(interpolate("cost $5 {x}", &e).unwrap(), "cost $5 {x}");
        assert_eq!(interpolate("$", &e).unwrap(), "$");
        assert_eq!(interpolate("$${KEY}", &e).unwrap(), "$v");
        assert_eq!(interpolate("}${KEY}}", &e).unwrap(), "}v}");
    }

    #[test]
    fn interpolate_does_not_rescan_replaced_text() {
        let e = env(&[("A", "${B}"), ("B", "nope")]);
        assert_eq!(interpolate("${A}", &e).unwrap(), "${B}");
    }

    #[test]
    fn interpolate_missing_variable_names_it() {
        let e = env(&[]);
        assert_eq!(
            interpolate("Bearer ${OPENAI_API_KEY}", &e).unwrap_err(),
            "environment variable OPENAI_API_KEY is not set"
        );
    }

    #[test]
    fn interpolate_empty_or_blank_variable_is_an_error() {
        let e = env(&[("EMPTY", ""), ("BLANK", " \t\n")]);
        assert_eq!(
            interpolate("${EMPTY}", &e).unwrap_err(),
            "environment variable EMPTY is empty (or only whitespace)"
        );
        assert!(interpolate("x${BLANK}", &e).unwrap_err().contains("BLANK"));
    }

    #[test]
    fn interpolate_unterminated_is_an_error() {
        let e = env(&[("KEY", "v")]);
        let err = interpolate("Bearer ${KEY", &e).unwrap_err();
        assert!(err.starts_with("unterminated `${`"), "{err}");
        assert!(interpolate("${KEY} ${", &e).is_err());
    }

    #[test]
    fn interpolate_rejects_defaults_and_bad_names() {
        let e = env(&[("KEY", "v")]);
        for bad in [
            "${KEY:-x}",
            "${}",
            "${ KEY }",
            "${1KEY}",
            "${KE-Y}",
            "${KEY-}",
        ] {
            let err = interpolate(bad, &e).unwrap_err();
            assert!(err.starts_with("invalid variable name"), "{bad}: {err}");
        }
    }

    #[test]
    fn interpolate_os_environ_whole_string() {
        let e = env(&[("OPENAI_API_KEY", "sk-9")]);
        assert_eq!(
            interpolate("os.environ/OPENAI_API_KEY", &e).unwrap(),
            "sk-9"
        );
        assert_eq!(
            interpolate("  os.environ/OPENAI_API_KEY ", &e).unwrap(),
            "sk-9"
        );
        assert_eq!(
            interpolate("os.environ/MISSING", &e).unwrap_err(),
            "environment variable MISSING is not set"
        );
        assert!(interpolate("os.environ/", &e)
            .unwrap_err()
            .starts_with("invalid variable name"));
        // Only the whole string is the LiteLLM form; inside text it is plain text.
        assert_eq!(
            interpolate("x os.environ/OPENAI_API_KEY", &e).unwrap(),
            "x os.environ/OPENAI_API_KEY"
        );
    }

    #[test]
    fn var_names() {
        assert!(is_var_name("_"));
        assert!(is_var_name("A_1"));
        assert!(is_var_name("a"));
        assert!(!is_var_name(""));
        assert!(!is_var_name("1A"));
        assert!(!is_var_name("A.B"));
        assert!(!is_var_name("Ä"));
    }

    fn kv(text: &str) -> Vec<(String, String)> {
        parse_dotenv(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dotenv_plain_forms() {
        let text = "\
# comment
OPENAI_API_KEY=sk-1

export ANTHROPIC_API_KEY=sk-2
  export\tINDENTED = spaced value  
EMPTY=
HASH=a#b
LEADING_HASH=#secret
EMPTY_COMMENTED= # nothing here
COMMENTED=value # trailing comment
URL=https://example.com/v1
";
        assert_eq!(
            kv(text),
            pairs(&[
                ("OPENAI_API_KEY", "sk-1"),
                ("ANTHROPIC_API_KEY", "sk-2"),
                ("INDENTED", "spaced value"),
                ("EMPTY", ""),
                ("HASH", "a#b"),
                ("LEADING_HASH", "#secret"),
                ("EMPTY_COMMENTED", ""),
                ("COMMENTED", "value"),
                ("URL", "https://example.com/v1"),
            ])
        );
    }

    #[test]
    fn dotenv_quotes() {
        let text = r#"
SINGLE='lit $X \n # not a comment'
DOUBLE="a\tb\nc \"q\" \\ \$X \z"
DQ_COMMENT="v" # after
SQ_EMPTY=''
DQ_EMPTY=""
EQ="a=b=c"
"#;
        assert_eq!(
            kv(text),
            pairs(&[
                ("SINGLE", "lit $X \\n # not a comment"),
                ("DOUBLE", "a\tb\nc \"q\" \\ $X \\z"),
                ("DQ_COMMENT", "v"),
                ("SQ_EMPTY", ""),
                ("DQ_EMPTY", ""),
                ("EQ", "a=b=c"),
            ])
        );
    }

    #[test]
    fn dotenv_multiline_quoted_value() {
        let text = "A=\"line1\nline2\"\nB='x\r\ny'\nC=3\n";
        assert_eq!(
            kv(text),
            pairs(&[("A", "line1\nline2"), ("B", "x\ny"), ("C", "3")])
        );
    }

    #[test]
    fn dotenv_crlf_bom_and_duplicates() {
        let text = "\u{feff}A=1\r\nB=\"2\"\r\nA=3\r\n";
        assert_eq!(kv(text), pairs(&[("A", "1"), ("B", "2"), ("A", "3")]));
    }

    #[test]
    fn dotenv_export_prefix_needs_a_separator() {
        // `exporter=1` is a variable called `exporter`, not `export er=1`.
        assert_eq!(kv("exporter=1"), pairs(&[("exporter", "1")]));
        assert_eq!(kv("export=1"), pairs(&[("export", "1")]));
    }

    #[test]
    fn dotenv_errors_name_the_line() {
        assert_eq!(
            parse_dotenv("A=1\nNOT A PAIR\n").unwrap_err(),
            "line 2: expected KEY=VALUE"
        );
        assert_eq!(
            parse_dotenv("\n\nexport KEY\n").unwrap_err(),
            "line 3: expected KEY=VALUE"
        );
        assert_eq!(
            parse_dotenv("A.B=1").unwrap_err(),
            "line 1: invalid variable name \"A.B\" (expected [A-Za-z_][A-Za-z0-9_]*)"
        );
        assert_eq!(
            parse_dotenv("=1").unwrap_err(),
            "line 1: invalid variable name \"\" (expected [A-Za-z_][A-Za-z0-9_]*)"
        );
        assert_eq!(
            parse_dotenv("A=1\nB=\"open\nstill open\n").unwrap_err(),
            "line 2: unterminated double quote"
        );
        assert_eq!(
            parse_dotenv("A='open").unwrap_err(),
            "line 1: unterminated single quote"
        );
        assert_eq!(
            parse_dotenv("A=\"x\" y").unwrap_err(),
            "line 1: unexpected text after the closing quote"
        );
        assert_eq!(
            parse_dotenv("A=\"x\ny\" z").unwrap_err(),
            "line 2: unexpected text after the closing quote"
        );
    }

    #[test]
    fn dotenv_empty_text() {
        assert!(kv("").is_empty());
        assert!(kv("\n\n# only comments\n").is_empty());
    }

    #[test]
    fn load_dotenv_reads_a_file_and_prefixes_errors_with_the_path() {
        let dir = std::env::temp_dir().join(format!("ditto-dotenv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("test.env");
        std::fs::write(&path, "export K='v'\n").unwrap();
        assert_eq!(load_dotenv(&path).unwrap(), pairs(&[("K", "v")]));
        std::fs::write(&path, "oops\n").unwrap();
        let err = load_dotenv(&path).unwrap_err();
        assert!(
            err.ends_with("test.env: line 1: expected KEY=VALUE"),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
        let err = load_dotenv(&path).unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
        let _ = std::fs::remove_dir(&dir);
    }
}
