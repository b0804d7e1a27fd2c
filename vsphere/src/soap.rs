//! vim25 SOAP envelopes: writing requests and reading answers and faults.
//!
//! Invariants:
//! - Every request is `<Method xmlns="urn:vim25"><_this type="T">id</_this>args…</Method>` with
//!   arguments in WSDL order; every text and attribute value goes through [`esc`].
//! - A fault is classified by the `xsi:type` of the first child of `detail` (a SOAP fault) or of
//!   `error/fault` (a task's `LocalizedMethodFault`); its message is the fault string, or the
//!   localized message, or else the fault's own fields, so it is never empty.
//! - Managed object ids are opaque: `vm-9`, `ha-host`, `session[…]…` are all kept as given.

use crate::xmltree::{self, Element};
use std::borrow::Cow;

/// A managed object reference (`<obj type="VirtualMachine">vm-42</obj>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Moref {
    pub kind: String,
    pub value: String,
}

impl Moref {
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }

    /// Reads a reference element; `None` if it carries no `type`.
    pub fn from_element(e: &Element) -> Option<Self> {
        let kind = e.mor_type.clone()?;
        Some(Self {
            kind,
            value: e.text.trim().to_string(),
        })
    }
}

impl std::fmt::Display for Moref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Escapes text for element content and attribute values.
pub fn esc(s: &str) -> Cow<'_, str> {
    quick_xml::escape::escape(s)
}

/// `<tag>text</tag>`, escaped.
pub fn el(tag: &str, text: &str) -> String {
    format!("<{tag}>{}</{tag}>", esc(text))
}

/// `<tag type="Kind">value</tag>`.
pub fn mor(tag: &str, m: &Moref) -> String {
    format!("<{tag} type=\"{}\">{}</{tag}>", esc(&m.kind), esc(&m.value))
}

/// The whole request document for `method` on `this`, with `args` already encoded.
pub fn envelope(method: &str, this: &Moref, args: &str) -> String {
    format!(
        concat!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
            "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" ",
            "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" ",
            "xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">",
            "<soapenv:Body><{m} xmlns=\"urn:vim25\">{this}{args}</{m}></soapenv:Body>",
            "</soapenv:Envelope>"
        ),
        m = method,
        this = mor("_this", this),
        args = args
    )
}

/// A fault as vSphere reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The fault type, e.g. `InvalidPowerState`.
    pub kind: String,
    pub message: String,
    /// The fault's own element (its fields), when there is one.
    pub detail: Option<Element>,
}

/// What an answer turned out to be, short of a transport error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The `<MethodResponse>` element.
    Response(Element),
    Fault(Fault),
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

fn fields_summary(e: &Element) -> String {
    let parts: Vec<String> = e
        .children
        .iter()
        .filter(|c| !c.text.trim().is_empty())
        .map(|c| format!("{}={}", c.name, c.text.trim()))
        .collect();
    parts.join(", ")
}

fn message_or_fields(message: &str, kind: &str, detail: Option<&Element>) -> String {
    let message = message.trim();
    if !message.is_empty() {
        return message.to_string();
    }
    match detail.map(fields_summary) {
        Some(f) if !f.is_empty() => format!("{kind} ({f})"),
        _ => kind.to_string(),
    }
}

/// The kind of a fault element: its `xsi:type`, else its name without the `Fault` suffix that
/// the wrapper elements carry (`FileNotFoundFault` → `FileNotFound`).
fn fault_kind(e: &Element) -> String {
    e.xsi_type.clone().unwrap_or_else(|| {
        e.name
            .strip_suffix("Fault")
            .filter(|s| !s.is_empty())
            .unwrap_or(&e.name)
            .to_string()
    })
}

/// Reads a SOAP `Fault` element (the child of `Body`).
pub fn parse_soap_fault(fault: &Element) -> Fault {
    let faultstring = fault.text_at("faultstring").unwrap_or("");
    let detail = fault.child("detail").and_then(|d| d.children.first());
    match detail {
        Some(d) => {
            let kind = fault_kind(d);
            Fault {
                message: message_or_fields(faultstring, &kind, Some(d)),
                kind,
                detail: Some(d.clone()),
            }
        }
        None => {
            let code = fault.text_at("faultcode").unwrap_or("ServerFaultCode");
            let kind = code.rsplit(':').next().unwrap_or(code).to_string();
            Fault {
                message: message_or_fields(faultstring, &kind, None),
                kind,
                detail: None,
            }
        }
    }
}

/// Reads a `LocalizedMethodFault` (`TaskInfo.error`): `<fault xsi:type="X">…</fault>` plus an
/// optional `localizedMessage`.
pub fn parse_localized_fault(error: &Element) -> Fault {
    let localized = error.text_at("localizedMessage").unwrap_or("");
    match error.child("fault") {
        Some(f) => {
            let kind = f.xsi_type.clone().unwrap_or_else(|| "MethodFault".into());
            let faultmsg = f.text_at("faultMessage/message").unwrap_or("");
            let msg = if localized.trim().is_empty() {
                faultmsg
            } else {
                localized
            };
            Fault {
                message: message_or_fields(msg, &kind, Some(f)),
                kind,
                detail: Some(f.clone()),
            }
        }
        None => Fault {
            kind: "MethodFault".into(),
            message: message_or_fields(localized, "MethodFault", None),
            detail: None,
        },
    }
}

/// Reads a whole answer document: the response element or the fault.
pub fn parse_answer(xml: &str) -> Result<Answer, DecodeError> {
    let root = xmltree::parse(xml).map_err(|e| DecodeError(e.0))?;
    let body = root
        .find("Body")
        .ok_or_else(|| DecodeError("the answer has no SOAP Body".into()))?;
    let first = body
        .children
        .first()
        .ok_or_else(|| DecodeError("the SOAP Body is empty".into()))?;
    if first.name == "Fault" {
        Ok(Answer::Fault(parse_soap_fault(first)))
    } else {
        Ok(Answer::Response(first.clone()))
    }
}

/// `returnval` of a response, as a managed object reference.
pub fn returnval_moref(resp: &Element) -> Option<Moref> {
    resp.child("returnval").and_then(Moref::from_element)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_text_is_escaped() {
        let env = envelope(
            "StartProgramInGuest",
            &Moref::new("GuestProcessManager", "pm"),
            &el("arguments", "a && b < c > \"d\""),
        );
        let root = xmltree::parse(&env).unwrap();
        let m = root.find("StartProgramInGuest").unwrap();
        assert_eq!(m.text_at("arguments"), Some("a && b < c > \"d\""));
        assert_eq!(
            m.child("_this").unwrap().mor_type.as_deref(),
            Some("GuestProcessManager")
        );
    }

    #[test]
    fn soap_fault_without_a_string_gets_its_fields_as_message() {
        let xml = r#"<soapenv:Envelope xmlns:soapenv="s" xmlns:xsi="i"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring></faultstring><detail><GuestProcessNotFoundFault xmlns="urn:vim25" xsi:type="GuestProcessNotFound"><pid>7</pid></GuestProcessNotFoundFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        let Answer::Fault(f) = parse_answer(xml).unwrap() else {
            panic!("expected a fault")
        };
        assert_eq!(f.kind, "GuestProcessNotFound");
        assert_eq!(f.message, "GuestProcessNotFound (pid=7)");
    }

    #[test]
    fn localized_fault_kind_comes_from_the_inner_fault_type() {
        let xml = r#"<error xmlns:X="i"><fault X:type="InvalidPowerState"><requestedState>poweredOn</requestedState></fault><localizedMessage>The attempted operation cannot be performed in the current state (Powered off).</localizedMessage></error>"#;
        let f = parse_localized_fault(&xmltree::parse(xml).unwrap());
        assert_eq!(f.kind, "InvalidPowerState");
        assert!(f.message.starts_with("The attempted operation"));
    }
}
