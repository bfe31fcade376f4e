//! The analyst console's files: `console/dist` (built by Vite from `console/src`, committed),
//! embedded in the binary and served from the API's listener at `/` and `/assets/…`.
//!
//! They are the page's code, not data: served to anyone, without a credential and without an
//! audit record (as `/healthz`). Everything the page then does is an ordinary API call with the
//! credential the analyst typed — authenticated, role-checked and recorded. Every answer carries
//! a Content-Security-Policy that lets the page load nothing but Vigil's own files and talk to
//! nothing but Vigil's own API: no inline script, no CDN, no frame, no form posting elsewhere.
//! **Not for:** what the console shows (`console/src`), the API it calls (`super`).

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;

#[derive(rust_embed::Embed)]
#[folder = "../console/dist"]
struct Assets;

/// The policy every console answer carries.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

/// The console's routes (added outside the audit layer: see the module's top).
pub(crate) fn routes(r: Router<AppState>) -> Router<AppState> {
    r.route("/", get(|| async { file("index.html", false) }))
        .route(
            "/assets/{*path}",
            get(|Path(p): Path<String>| async move { file(&format!("assets/{p}"), true) }),
        )
}

/// One embedded file with the console's headers; `immutable`: its name carries its hash.
fn file(path: &str, immutable: bool) -> Response {
    let Some(f) = Assets::get(path) else {
        return (StatusCode::NOT_FOUND, "no such console file\n").into_response();
    };
    let mime = f.metadata.mimetype().to_owned();
    let mut res = f.data.into_owned().into_response();
    let h = res.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(h, header::CONTENT_TYPE, &mime);
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(
        h,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    let cache = if immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    set(h, header::CACHE_CONTROL, cache);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_console_is_embedded_and_every_file_it_names_is_there() {
        let index = Assets::get("index.html").expect("console/dist/index.html is embedded");
        let html = String::from_utf8_lossy(&index.data).into_owned();
        // Vite names its files by hash: each one the page loads must be embedded.
        let mut named = 0;
        for part in html.split(['"', '\'']) {
            if let Some(p) = part.strip_prefix("/assets/") {
                named += 1;
                assert!(Assets::get(&format!("assets/{p}")).is_some(), "{p} missing");
            }
        }
        assert!(
            named >= 2,
            "index.html loads a script and a stylesheet: {html}"
        );
        // Nothing from elsewhere, nothing inline that the policy would refuse.
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{html}"
        );
        assert!(
            !html.contains("<script>") && !html.contains("style="),
            "{html}"
        );
    }

    #[test]
    fn answers_carry_the_policy_and_an_unknown_file_is_404() {
        let r = file("index.html", false);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert_eq!(
            file("assets/../../Cargo.toml", true).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            file("assets/nothing.js", true).status(),
            StatusCode::NOT_FOUND
        );
    }
}
