//! The flat XML of WeChat's pushes, outer (`<xml><AppId/><Encrypt/></xml>`) and decrypted
//! (`<xml><InfoType/>…</xml>`): one root named `xml` whose children are named fields.
//!
//! Read with quick-xml, which never expands an entity. On top of it this refuses what a
//! push never holds and an attacker would: a DOCTYPE (so no entity can be declared), any
//! entity reference but the five predefined ones and character references, processing
//! instructions, duplicate fields, bodies over `MAX_BODY`, and anything not UTF-8.
//!
//! Nesting: a field's own text is kept and elements inside a field are skipped (checked for
//! well-formedness, their text dropped). No token-related push nests, but other WeCom
//! events on the same URL do (`change_contact` has `<ExtAttr><Item>…`), and those must
//! still be read to be answered `success`. More than `MAX_DEPTH` levels is refused.

use std::fmt;

use quick_xml::Reader;
use quick_xml::events::Event;

/// The largest body read, outer or decrypted. Pushes are well under 4 KiB.
pub const MAX_BODY: usize = 64 * 1024;
/// Levels of elements allowed, the root being level 1.
const MAX_DEPTH: usize = 8;

/// The fields of a push, in document order, each name once.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// The text of field `name`, if present (possibly empty).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The names and values in document order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    #[cfg(test)]
    #[allow(dead_code)]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Only the field names: the values may be tickets or codes.
impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}

/// Why a body was refused. Names come from the body, so they are shortened; values are
/// never shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XmlError {
    TooLarge,
    NotUtf8,
    DocType,
    /// An entity reference other than the five of XML (`&lt;` `&gt;` `&amp;` `&apos;` `&quot;`).
    Entity(String),
    /// A character reference to nothing, or to a character XML does not allow.
    BadChar,
    ProcessingInstruction,
    /// The root element is not `xml`, or there are two roots, or none.
    Root,
    Duplicate(String),
    TooDeep,
    /// The body ends inside an element.
    Truncated,
    /// Text or elements after the root.
    Trailing,
    /// quick-xml's syntax error, as the byte position where it was found.
    Malformed(u64),
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XmlError::TooLarge => write!(f, "the XML body is larger than {MAX_BODY} bytes"),
            XmlError::NotUtf8 => f.write_str("the XML body is not UTF-8"),
            XmlError::DocType => f.write_str("the XML body has a DOCTYPE, which pushes never have"),
            XmlError::Entity(name) => write!(
                f,
                "the XML body refers to entity {name:?}, which is not expanded"
            ),
            XmlError::BadChar => f.write_str("the XML body has a character XML does not allow"),
            XmlError::ProcessingInstruction => {
                f.write_str("the XML body has a processing instruction, which pushes never have")
            }
            XmlError::Root => f.write_str("the XML body is not one <xml> element"),
            XmlError::Duplicate(name) => write!(f, "the XML body has field {name:?} twice"),
            XmlError::TooDeep => {
                write!(f, "the XML body nests more than {MAX_DEPTH} elements deep")
            }
            XmlError::Truncated => f.write_str("the XML body ends inside an element"),
            XmlError::Trailing => f.write_str("the XML body has content after </xml>"),
            XmlError::Malformed(pos) => write!(f, "the XML body is malformed near byte {pos}"),
        }
    }
}

impl std::error::Error for XmlError {}

/// A name from the body, made short enough for a message.
fn short(name: &str) -> String {
    name.chars().take(64).collect()
}

/// The predefined entities of XML; every other name is refused.
fn predefined(name: &str) -> Option<char> {
    Some(match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => return None,
    })
}

/// XML 1.0's Char production: what a document may contain, escaped or not.
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Reads a push body into its fields (see the module's doc for what is refused).
pub fn parse_fields(xml: &[u8]) -> Result<Fields, XmlError> {
    if xml.len() > MAX_BODY {
        return Err(XmlError::TooLarge);
    }
    let text = std::str::from_utf8(xml).map_err(|_| XmlError::NotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = Reader::from_str(text);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.check_comments = true;
    config.allow_dangling_amp = false;
    config.allow_unmatched_ends = false;

    let mut fields = Fields::default();
    // Elements open now: 0 outside the root, 1 inside it, 2 inside a field.
    let mut depth = 0usize;
    let mut seen_root = false;
    // The field being read (name, text so far).
    let mut current: Option<(String, String)> = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|_| XmlError::Malformed(reader.error_position()))?;
        // Text that belongs to the field being read: its own, not a nested element's.
        let in_field = depth == 2;
        match event {
            Event::Start(start) => {
                let name = start.name().into_inner().to_string();
                open(&mut depth, &mut seen_root, &name)?;
                if depth == 2 {
                    current = Some((name, String::new()));
                }
            }
            Event::Empty(start) => {
                let name = start.name().into_inner().to_string();
                open(&mut depth, &mut seen_root, &name)?;
                if depth == 2 {
                    add(&mut fields, name, String::new())?;
                }
                depth -= 1;
            }
            Event::End(_) => {
                if depth == 2
                    && let Some((name, value)) = current.take()
                {
                    add(&mut fields, name, value)?;
                }
                depth = depth.checked_sub(1).ok_or(XmlError::Root)?;
            }
            Event::Text(t) => {
                let content = t.xml10_content();
                if depth == 0 {
                    if !content.trim().is_empty() {
                        return Err(if seen_root {
                            XmlError::Trailing
                        } else {
                            XmlError::Root
                        });
                    }
                } else if in_field && let Some((_, value)) = current.as_mut() {
                    value.push_str(&content);
                }
            }
            Event::CData(c) => {
                if depth == 0 {
                    return Err(XmlError::Root);
                }
                if in_field && let Some((_, value)) = current.as_mut() {
                    value.push_str(&c);
                }
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => predefined(&r).ok_or_else(|| XmlError::Entity(short(&r)))?,
                    Err(_) => return Err(XmlError::BadChar),
                };
                if !xml_char(c) {
                    return Err(XmlError::BadChar);
                }
                if depth == 0 {
                    return Err(XmlError::Root);
                }
                if in_field && let Some((_, value)) = current.as_mut() {
                    value.push(c);
                }
            }
            Event::DocType(_) => return Err(XmlError::DocType),
            Event::PI(_) => return Err(XmlError::ProcessingInstruction),
            // Only before the root; quick-xml reports a declaration anywhere else as a PI
            // named `xml`, or an error.
            Event::Decl(_) if !seen_root => {}
            Event::Decl(_) => return Err(XmlError::ProcessingInstruction),
            Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if depth != 0 {
        return Err(XmlError::Truncated);
    }
    if !seen_root {
        return Err(XmlError::Root);
    }
    if fields.iter().any(|(_, v)| !v.chars().all(xml_char)) {
        return Err(XmlError::BadChar);
    }
    Ok(fields)
}

/// One more element open: the root must be `xml` and the only one.
fn open(depth: &mut usize, seen_root: &mut bool, name: &str) -> Result<(), XmlError> {
    if *depth == 0 {
        if *seen_root {
            return Err(XmlError::Trailing);
        }
        if name != "xml" {
            return Err(XmlError::Root);
        }
        *seen_root = true;
    }
    *depth += 1;
    if *depth > MAX_DEPTH {
        return Err(XmlError::TooDeep);
    }
    Ok(())
}

fn add(fields: &mut Fields, name: String, value: String) -> Result<(), XmlError> {
    if fields.get(&name).is_some() {
        return Err(XmlError::Duplicate(short(&name)));
    }
    fields.0.push((name, value));
    Ok(())
}

/// The fields as XML again, every value in CDATA, with the values of the fields named in
/// `secret` replaced by `[removed]`: what a hook may see of a push.
pub fn redact(fields: &Fields, secret: &[&str]) -> String {
    let mut out = String::from("<xml>");
    for (name, value) in fields.iter() {
        let value = if secret.contains(&name) {
            "[removed]"
        } else {
            value
        };
        out.push('<');
        out.push_str(name);
        out.push_str("><![CDATA[");
        // `]]>` cannot appear in a CDATA section: end it after `]]` and start another
        // before `>`.
        out.push_str(&value.replace("]]>", "]]]]><![CDATA[>"));
        out.push_str("]]></");
        out.push_str(name);
        out.push('>');
    }
    out.push_str("</xml>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Fields, XmlError> {
        parse_fields(s.as_bytes())
    }

    #[test]
    fn reads_the_fields_of_a_push() {
        let f = parse(
            "<xml>\n<AppId><![CDATA[wx0123]]></AppId>\n<CreateTime>1413192605</CreateTime>\n\
             <InfoType><![CDATA[component_verify_ticket]]></InfoType>\n\
             <ComponentVerifyTicket><![CDATA[ticket@@@x]]></ComponentVerifyTicket>\n</xml>\n",
        )
        .unwrap();
        assert_eq!(f.get("AppId"), Some("wx0123"));
        assert_eq!(f.get("CreateTime"), Some("1413192605"));
        assert_eq!(f.get("ComponentVerifyTicket"), Some("ticket@@@x"));
        assert_eq!(f.get("Missing"), None);
        assert_eq!(
            f.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["AppId", "CreateTime", "InfoType", "ComponentVerifyTicket"]
        );
        let shown = format!("{f:?}");
        assert!(!shown.contains("ticket@@@x"), "{shown}");
    }

    #[test]
    fn empty_fields_declaration_comments_and_bom() {
        let f = parse(
            "\u{feff}<?xml version=\"1.0\" encoding=\"UTF-8\"?><!-- c --><xml><ToUserName>s</ToUserName>\
             <AgentID><![CDATA[]]></AgentID><Empty/><Other></Other></xml>",
        )
        .unwrap();
        assert_eq!(f.get("AgentID"), Some(""));
        assert_eq!(f.get("Empty"), Some(""));
        assert_eq!(f.get("Other"), Some(""));
        assert_eq!(parse("<xml/>").unwrap().len(), 0);
    }

    #[test]
    fn predefined_entities_and_char_refs_are_read() {
        let f = parse(
            "<xml><A>a&lt;b&amp;c&#x41;&#66;&quot;&apos;&gt;</A><B>x<![CDATA[&lt;]]>y</B></xml>",
        )
        .unwrap();
        assert_eq!(f.get("A"), Some("a<b&cAB\"'>"));
        assert_eq!(f.get("B"), Some("x&lt;y"));
    }

    #[test]
    fn nested_elements_keep_the_fields_own_text() {
        let f = parse("<xml><ExtAttr>own<Item><Name>n</Name></Item>text</ExtAttr><Id>1</Id></xml>")
            .unwrap();
        assert_eq!(f.get("ExtAttr"), Some("owntext"));
        assert_eq!(f.get("Name"), None);
        assert_eq!(f.get("Id"), Some("1"));
        let deep = format!("<xml>{}{}</xml>", "<a>".repeat(8), "</a>".repeat(8));
        assert_eq!(parse(&deep).unwrap_err(), XmlError::TooDeep);
        let ok = format!("<xml>{}{}</xml>", "<a>".repeat(7), "</a>".repeat(7));
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn doctype_and_entities_are_refused() {
        let xxe = "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>\
                   <xml><A>&xxe;</A></xml>";
        assert_eq!(parse(xxe).unwrap_err(), XmlError::DocType);
        let laughs = "<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;\">]>\
                      <xml><A>&lol2;</A></xml>";
        assert_eq!(parse(laughs).unwrap_err(), XmlError::DocType);
        // A reference with no DOCTYPE at all.
        assert_eq!(
            parse("<xml><A>&xxe;</A></xml>").unwrap_err(),
            XmlError::Entity("xxe".into())
        );
        assert_eq!(
            parse("<xml><A>&nbsp;</A></xml>").unwrap_err(),
            XmlError::Entity("nbsp".into())
        );
        // An <!ENTITY outside a DOCTYPE is not XML.
        assert!(parse("<xml><!ENTITY x \"y\"><A>a</A></xml>").is_err());
        assert!(parse("<xml><A>a & b</A></xml>").is_err());
    }

    #[test]
    fn bad_characters_are_refused() {
        assert_eq!(
            parse("<xml><A>&#0;</A></xml>").unwrap_err(),
            XmlError::BadChar
        );
        assert_eq!(
            parse("<xml><A>&#1;</A></xml>").unwrap_err(),
            XmlError::BadChar
        );
        assert_eq!(
            parse("<xml><A>&#xD800;</A></xml>").unwrap_err(),
            XmlError::BadChar
        );
        assert_eq!(
            parse("<xml><A>a\u{1}b</A></xml>").unwrap_err(),
            XmlError::BadChar
        );
        assert_eq!(
            parse_fields(b"<xml><A>\xff</A></xml>").unwrap_err(),
            XmlError::NotUtf8
        );
    }

    #[test]
    fn processing_instructions_are_refused() {
        assert_eq!(
            parse("<?xml-stylesheet href=\"x\"?><xml></xml>").unwrap_err(),
            XmlError::ProcessingInstruction
        );
        assert_eq!(
            parse("<xml><?php echo 1 ?></xml>").unwrap_err(),
            XmlError::ProcessingInstruction
        );
    }

    #[test]
    fn the_shape_is_checked() {
        assert_eq!(parse("<root><A>1</A></root>").unwrap_err(), XmlError::Root);
        assert_eq!(parse("").unwrap_err(), XmlError::Root);
        assert_eq!(parse("just text").unwrap_err(), XmlError::Root);
        assert_eq!(
            parse("<xml></xml><xml></xml>").unwrap_err(),
            XmlError::Trailing
        );
        assert_eq!(parse("<xml></xml>tail").unwrap_err(), XmlError::Trailing);
        assert_eq!(
            parse("<xml><A>1</A><A>2</A></xml>").unwrap_err(),
            XmlError::Duplicate("A".into())
        );
        assert_eq!(
            parse("<xml><A/><A>2</A></xml>").unwrap_err(),
            XmlError::Duplicate("A".into())
        );
    }

    #[test]
    fn truncated_and_malformed_bodies_are_refused() {
        for body in [
            "<xml><A>1</A>",
            "<xml><A>1",
            "<xml><A><![CDATA[1",
            "<xml><A",
            "<xml><A>1</B></xml>",
            "<xml></A></xml>",
            "</xml>",
        ] {
            assert!(parse(body).is_err(), "{body}");
        }
        assert_eq!(parse("<xml><A>1</A>").unwrap_err(), XmlError::Truncated);
    }

    #[test]
    fn oversize_bodies_are_refused() {
        let pad = "x".repeat(MAX_BODY);
        assert_eq!(
            parse(&format!("<xml><A>{pad}</A></xml>")).unwrap_err(),
            XmlError::TooLarge
        );
        let fits = format!("<xml><A>{}</A></xml>", "x".repeat(MAX_BODY - 18));
        assert_eq!(fits.len(), MAX_BODY);
        assert!(parse(&fits).is_ok());
    }

    #[test]
    fn errors_show_no_value() {
        let err = parse("<xml><A><![CDATA[secret-ticket]]></A><A>x</A></xml>").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn redact_removes_secrets_and_round_trips() {
        let f = parse(
            "<xml><AppId>wx1</AppId><AuthorizationCode>code-123</AuthorizationCode>\
             <Odd><![CDATA[a]]]]><![CDATA[>b]]></Odd><Amp>x&amp;y</Amp></xml>",
        )
        .unwrap();
        assert_eq!(f.get("Odd"), Some("a]]>b"));
        let out = redact(&f, &["AuthorizationCode", "PermanentCode"]);
        assert!(!out.contains("code-123"), "{out}");
        assert_eq!(
            out,
            "<xml><AppId><![CDATA[wx1]]></AppId><AuthorizationCode><![CDATA[[removed]]]></AuthorizationCode>\
             <Odd><![CDATA[a]]]]><![CDATA[>b]]></Odd><Amp><![CDATA[x&y]]></Amp></xml>"
        );
        let back = parse(&out).unwrap();
        assert_eq!(back.get("Odd"), Some("a]]>b"));
        assert_eq!(back.get("Amp"), Some("x&y"));
        assert_eq!(back.get("AuthorizationCode"), Some("[removed]"));
    }
}
