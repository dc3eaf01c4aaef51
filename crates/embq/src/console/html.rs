//! Page layout and escaping: every value from the store goes through [`esc`].

use axum::response::Html;

/// Escapes text for an HTML text node or a quoted attribute value.
pub fn esc(s: &str) -> String {
    html_escape::encode_safe(s).into_owned()
}

/// The page frame: navigation, the page's body, the stylesheet and the live-refresh script.
pub fn layout(title: &str, csrf: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"csrf\" content=\"{csrf}\"><title>{t} · embq console</title>\
         <link rel=\"stylesheet\" href=\"/assets/console.css\"><script src=\"/assets/console.js\" defer></script>\
         </head><body><nav><strong>embq</strong> <a href=\"/\">Overview</a> <a href=\"/jobs\">Jobs</a> \
         <a href=\"/dead\">Dead letters</a> <a href=\"/search\">Search</a></nav><main><h1>{t}</h1>{body}</main>\
         </body></html>",
        csrf = esc(csrf),
        t = esc(title),
    ))
}

/// A hidden CSRF field for a form.
pub fn csrf_field(csrf: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf))
}

/// A time as RFC 3339 to the second, or a dash.
pub fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_else(|| "–".into())
}

/// Percent-encodes a query-string value.
pub fn url_arg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(esc("<img src=x onerror=alert(1)>"), "&lt;img src=x onerror=alert(1)&gt;");
        assert_eq!(esc("\"'&"), "&quot;&#x27;&amp;");
    }
}
