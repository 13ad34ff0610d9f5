//! Security headers on every answer (issue 16).
//!
//! The web page holds a bearer token in memory and shows health data, so it
//! must not run anybody else's script, be framed by another site (click-
//! jacking), or leak its URL (which may carry the token in its fragment)
//! through `Referer`. Every answer carries `Referrer-Policy: no-referrer`,
//! `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` and a
//! `Content-Security-Policy`: JSON answers the strictest one
//! ([`API_CSP`]); the page ([`page_csp`]) one that allows exactly its own
//! inline `<script>` and `<style>` elements, by their SHA-256 hashes taken
//! from the page as compiled in — any other script or style, an inline event
//! handler or a `style` attribute included, is refused by the browser.

use axum::extract::Request;
use axum::http::header::{self, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// The policy of every answer but the page: nothing may load, nothing may frame it.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// `'sha256-…'` sources of the bodies of every `<{tag}>…</{tag}>` element
/// in `html` (elements written with attributes are not looked for: the page
/// writes none, and a new one would simply be refused — the headless
/// Chromium test would fail).
pub fn inline_hashes(html: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(&open) {
        let body_and_rest = &rest[start + open.len()..];
        let Some(end) = body_and_rest.find(&close) else {
            break;
        };
        let digest = Sha256::digest(&body_and_rest.as_bytes()[..end]);
        out.push(format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &body_and_rest[end + close.len()..];
    }
    out
}

/// The page's policy: its own script and style (by hash), requests to this
/// origin only, no plugins, no `<base>`, forms only to itself, no framing.
pub fn page_csp(html: &str) -> String {
    format!(
        "default-src 'self'; script-src {}; style-src {}; img-src 'self'; connect-src 'self'; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        inline_hashes(html, "script").join(" "),
        inline_hashes(html, "style").join(" ")
    )
}

/// [`page_csp`] of the compiled-in page, computed once.
pub static PAGE_CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    HeaderValue::from_str(&page_csp(super::routes::INDEX_HTML))
        .unwrap_or_else(|_| HeaderValue::from_static(API_CSP))
});

/// Add the security headers to an answer (a `Content-Security-Policy` only
/// where the handler set none).
pub async fn secure(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(API_CSP));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_policy_names_its_one_script_and_one_style() {
        let html = super::super::routes::INDEX_HTML;
        assert_eq!(inline_hashes(html, "script").len(), 1);
        assert_eq!(inline_hashes(html, "style").len(), 1);
        let csp = PAGE_CSP.to_str().expect("ascii");
        assert!(
            csp.starts_with("default-src 'self'; script-src 'sha256-"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
    }

    #[test]
    fn hashes_are_of_the_element_bodies() {
        // echo -n 'a' | openssl dgst -sha256 -binary | base64
        assert_eq!(
            inline_hashes("<p><script>a</script><script>", "script"),
            ["'sha256-ypeBEsobvcr6wjGzmiPcTaeG7/gUfE5yuYB3ha/uSLs='"]
        );
        assert!(inline_hashes("<script type=module>a</script>", "script").is_empty());
    }
}
