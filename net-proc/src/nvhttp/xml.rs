//! nvhttp's XML replies: `<root status_code="N" [status_message="…"]>` with simple text children,
//! the shape moonlight-qt and moonlight-python parse. Every value is escaped.

use std::fmt::Write;

/// One reply document.
#[derive(Debug)]
pub struct Xml {
    status: u32,
    message: Option<String>,
    body: String,
}

impl Xml {
    /// A success reply (`status_code="200"`).
    pub fn ok() -> Xml {
        Xml {
            status: 200,
            message: None,
            body: String::new(),
        }
    }

    /// An error reply: clients read `status_code` and show `status_message`.
    pub fn error(status: u32, message: &str) -> Xml {
        Xml {
            status,
            message: Some(message.to_string()),
            body: String::new(),
        }
    }

    /// The `status_code` the document carries.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Adds `<name>value</name>`.
    pub fn field(mut self, name: &str, value: impl std::fmt::Display) -> Xml {
        self.push(name, &value.to_string());
        self
    }

    fn push(&mut self, name: &str, value: &str) {
        let _ = write!(self.body, "<{name}>{}</{name}>", escape(value));
    }

    /// Adds `<name>` with the given children (e.g. one `<App>`).
    pub fn element(mut self, name: &str, children: &[(&str, String)]) -> Xml {
        let _ = write!(self.body, "<{name}>");
        for (child, value) in children {
            self.push(child, value);
        }
        let _ = write!(self.body, "</{name}>");
        self
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.body.len() + 96);
        out.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
        let _ = write!(out, "<root status_code=\"{}\"", self.status);
        if let Some(message) = &self.message {
            let _ = write!(out, " status_message=\"{}\"", escape(message));
        }
        out.push('>');
        out.push_str(&self.body);
        out.push_str("</root>");
        out
    }
}

/// Escapes text for an element or a double-quoted attribute; drops characters XML 1.0 forbids.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_status_fields_and_elements() {
        let xml = Xml::ok()
            .field("hostname", "box")
            .element("App", &[("AppTitle", "Desktop".into()), ("ID", "1".into())])
            .render();
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<root status_code=\"200\">\
             <hostname>box</hostname><App><AppTitle>Desktop</AppTitle><ID>1</ID></App></root>"
        );
    }

    #[test]
    fn errors_carry_an_escaped_message() {
        let xml = Xml::error(401, "not \"paired\" <yet> & \u{1}").render();
        assert!(xml.contains(
            "<root status_code=\"401\" status_message=\"not &quot;paired&quot; &lt;yet&gt; &amp; \">"
        ), "{xml}");
        assert_eq!(Xml::error(404, "x").status(), 404);
        assert!(Xml::ok()
            .field("a", "<b>")
            .render()
            .contains("<a>&lt;b&gt;</a>"));
    }
}
