//! A tiny element tree for vim25 SOAP answers, built with quick-xml.
//!
//! Invariants:
//! - Element names are stored without their namespace prefix (`soapenv:Body` → `Body`): vim25
//!   never reuses a local name with two meanings inside one answer.
//! - A *prefixed* `type` attribute is the XML-schema instance type, whatever the prefix (vcsim
//!   writes `XMLSchema-instance:type`, ESXi writes `xsi:type`); it is kept in [`Element::xsi_type`]
//!   without its own value prefix (`xsd:string` → `string`). The *unprefixed* `type` attribute is a
//!   ManagedObjectReference's type and is kept apart in [`Element::mor_type`].
//! - Text is unescaped (entity and character references resolved) and concatenated.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// One element of a parsed document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub xsi_type: Option<String>,
    pub mor_type: Option<String>,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first child with this local name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child with this local name, in document order.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The element at a `/`-separated path of child names (first match at each level).
    pub fn path(&self, path: &str) -> Option<&Element> {
        path.split('/')
            .filter(|p| !p.is_empty())
            .try_fold(self, |e, p| e.child(p))
    }

    /// The text of the element at `path`, if present.
    pub fn text_at(&self, path: &str) -> Option<&str> {
        self.path(path).map(|e| e.text.as_str())
    }

    /// Depth-first search for the first descendant (or self) with this name.
    pub fn find(&self, name: &str) -> Option<&Element> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }
}

/// Why a document could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn local(name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    match name.rsplit_once(':') {
        Some((_, l)) => l.to_string(),
        None => name.into_owned(),
    }
}

fn open(start: &BytesStart<'_>) -> Result<Element, ParseError> {
    let mut el = Element {
        name: local(start.name().as_ref()),
        ..Element::default()
    };
    for attr in start.attributes() {
        let attr = attr.map_err(|e| ParseError(format!("bad attribute: {e}")))?;
        let key = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
        let value = attr
            .unescape_value()
            .map_err(|e| ParseError(format!("bad attribute value: {e}")))?
            .into_owned();
        if key == "type" {
            el.mor_type = Some(value);
        } else if key.ends_with(":type") && !key.starts_with("xmlns") {
            let v = match value.rsplit_once(':') {
                Some((_, l)) => l.to_string(),
                None => value,
            };
            el.xsi_type = Some(v);
        }
    }
    Ok(el)
}

/// Parses a whole document and returns its root element.
pub fn parse(xml: &str) -> Result<Element, ParseError> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| ParseError(format!("at byte {}: {e}", reader.buffer_position())))?;
        match event {
            Event::Start(s) => stack.push(open(&s)?),
            Event::Empty(s) => {
                let el = open(&s)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let mut el = stack
                    .pop()
                    .ok_or_else(|| ParseError("closing tag without an opening one".into()))?;
                if !el.children.is_empty() && el.text.trim().is_empty() {
                    // Indentation between child elements, not a value.
                    el.text.clear();
                }
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    let text = t
                        .unescape()
                        .map_err(|e| ParseError(format!("bad text: {e}")))?;
                    top.text.push_str(&text);
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&c.into_inner()));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(ParseError("the document ends inside an element".into()));
    }
    root.ok_or_else(|| ParseError("the document has no element".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixed_type_is_the_instance_type_and_plain_type_is_the_reference_type() {
        let doc = parse(
            r#"<a xmlns:X="urn:x"><val X:type="xsd:string">v</val><obj type="VirtualMachine">vm-1</obj></a>"#,
        )
        .unwrap();
        let val = doc.child("val").unwrap();
        assert_eq!(val.xsi_type.as_deref(), Some("string"));
        assert_eq!(val.mor_type, None);
        let obj = doc.child("obj").unwrap();
        assert_eq!(obj.mor_type.as_deref(), Some("VirtualMachine"));
        assert_eq!(obj.xsi_type, None);
    }

    #[test]
    fn entity_and_character_references_are_resolved() {
        let doc = parse("<a>&#34;x&#34; &lt;&amp;&gt;</a>").unwrap();
        assert_eq!(doc.text, "\"x\" <&>");
    }

    #[test]
    fn indentation_between_elements_is_not_text() {
        let doc = parse("<a>\n  <state>success</state>\n</a>").unwrap();
        assert_eq!(doc.text, "");
        assert_eq!(doc.text_at("state"), Some("success"));
    }

    #[test]
    fn a_truncated_document_is_an_error() {
        assert!(parse("<a><b>").is_err());
        assert!(parse("").is_err());
    }
}
