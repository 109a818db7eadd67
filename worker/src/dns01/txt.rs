//! TXT record data in presentation format, as the HTTP and AWS APIs take and give it: one
//! or more `"quoted"` character strings of at most 255 bytes, `\"` and `\\` escaped.
//!
//! This module owns quoting a value for Cloudflare and Route 53 and reading their answers
//! back. Only the escapes a dns-01 value can need are handled (a `\` before any character
//! keeps that character; `\ddd` numeric escapes are not decoded: ACME values are base64url).

/// TXT content as quoted character strings of at most 255 bytes each.
pub(crate) fn quote(value: &str) -> String {
    let mut out = Vec::new();
    let (mut current, mut raw_len) = (String::new(), 0);
    for c in value.chars() {
        if raw_len + c.len_utf8() > 255 {
            out.push(format!("\"{current}\""));
            current.clear();
            raw_len = 0;
        }
        if matches!(c, '"' | '\\') {
            current.push('\\');
        }
        current.push(c);
        raw_len += c.len_utf8();
    }
    out.push(format!("\"{current}\""));
    out.join(" ")
}

/// TXT content back to the value: quoted strings are unescaped and joined; content that
/// is not quoted is taken as it is.
pub(crate) fn unquote(content: &str) -> String {
    let content = content.trim();
    if !content.starts_with('"') {
        return content.to_owned();
    }
    let mut out = String::new();
    let mut chars = content.chars();
    let mut inside = false;
    while let Some(c) = chars.next() {
        match (inside, c) {
            (false, '"') => inside = true,
            (false, _) => {}
            (true, '"') => inside = false,
            (true, '\\') => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            (true, c) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_round_trips() {
        assert_eq!(quote("abc"), "\"abc\"");
        assert_eq!(unquote("\"abc\""), "abc");
        assert_eq!(unquote("abc"), "abc");
        assert_eq!(unquote("\"a\\\"b\""), "a\"b");
        assert_eq!(quote("a\"b\\"), "\"a\\\"b\\\\\"");
        let long = "x".repeat(300);
        let quoted = quote(&long);
        assert_eq!(
            quoted,
            format!("\"{}\" \"{}\"", "x".repeat(255), "x".repeat(45))
        );
        assert_eq!(unquote(&quoted), long);
    }
}
