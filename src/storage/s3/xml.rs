//! The little XML S3 speaks: the text of a tag, the blocks of a repeated element, entity
//! escaping. Answers are read bounded (see `XML_LIMIT`), so a linear scan is enough.

/// The text of the first `<tag>...</tag>` in `xml`, unescaped.
pub(super) fn xml_tag(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    Some(unescape(&xml[start..start + len]))
}

/// Every `<tag>...</tag>` block's inner text.
pub(super) fn xml_blocks<'a>(xml: &'a str, tag: &str) -> impl Iterator<Item = &'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut rest = xml;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let len = rest[start..].find(&close)?;
        let block = &rest[start..start + len];
        rest = &rest[start + len + close.len()..];
        Some(block)
    })
}

pub(super) fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let Some(end) = after.find(';') else {
            out.push_str(after);
            return out;
        };
        let ent = &after[1..end];
        let ch = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => ent
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => out.push(c),
            None => out.push_str(&after[..=end]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

pub(super) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_helpers() {
        let x = "<R><IsTruncated>true</IsTruncated><Contents><Key>a&amp;b</Key><Size>3</Size></Contents>\
                 <Contents><Key>c&#x2F;d&lt;</Key><Size>0</Size></Contents></R>";
        let got: Vec<_> = xml_blocks(x, "Contents")
            .map(|c| (xml_tag(c, "Key").unwrap(), xml_tag(c, "Size").unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a&b".to_string(), "3".to_string()),
                ("c/d<".into(), "0".into())
            ]
        );
        assert_eq!(xml_tag(x, "IsTruncated").as_deref(), Some("true"));
        assert_eq!(xml_tag(x, "Missing"), None);
        assert_eq!(unescape("x &bogus; &#65;"), "x &bogus; A");
        assert_eq!(escape("\"e&t\""), "&quot;e&amp;t&quot;");
    }

    proptest::proptest! {
        /// Issue #12: the LIST/error XML reader never panics on what a server (or a proxy in
        /// between) sends, and what it unescapes round-trips what `escape` wrote.
        #[test]
        fn xml_reader_never_panics(
            parts in proptest::collection::vec(proptest::prop_oneof![
                proptest::prelude::Just("<Contents>".to_string()),
                proptest::prelude::Just("</Contents>".to_string()),
                proptest::prelude::Just("<Key>".to_string()),
                proptest::prelude::Just("</Key>".to_string()),
                proptest::prelude::Just("&#x".to_string()),
                proptest::prelude::Just("&#".to_string()),
                proptest::prelude::Just(";".to_string()),
                proptest::prelude::Just("&amp".to_string()),
                "\\PC{0,8}",
            ], 0..24),
            text in "\\PC{0,30}",
        ) {
            let xml: String = parts.concat();
            for b in xml_blocks(&xml, "Contents") {
                let _ = xml_tag(b, "Key");
            }
            let _ = xml_tag(&xml, "Key");
            let _ = unescape(&xml);
            proptest::prop_assert_eq!(unescape(&escape(&text)), text);
        }
    }
}
