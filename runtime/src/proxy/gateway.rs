//! The one extension point generated code implements, after Pingora's
//! `ProxyHttp`: a route decision on the request head, then that route's
//! steps and action, all with concrete types (static dispatch, no `dyn`,
//! no allocation for the decision).
//!
//! Per request, on the worker thread that owns the connection:
//!
//! 1. [`Gateway::route`] runs once the head is parsed and validated
//!    (framing, Host, limits); it must be cheap and side-effect free. It
//!    sees `req.method()`, `req.host()` (the decided authority, with port),
//!    `req.path_only()` (the normalised path) and `req.headers()`. A head
//!    that failed validation never reaches it: the runtime answers
//!    400/413/417/431/501/505 itself.
//! 2. [`Gateway::request`] runs next with the route: it applies the
//!    route's request steps (header set/add/remove on the head) and
//!    returns the [`Action`]. Nothing has been read of the body yet.
//! 3. [`Gateway::response`] runs on the response head before it is written
//!    to the client (response steps): the upstream's for [`Action::Proxy`],
//!    the gateway's own for [`Action::Respond`] and [`Action::Redirect`].
//! 4. [`Gateway::logging`] runs last, once per request, whatever happened.
//!
//! Each method but `upstreams`, `route` and `request` has a default that
//! does nothing.
//!
//! Header steps edit the head in place: `headers_mut().set/append/remove`.
//! A `host` set by a request step is what the upstream receives (the route
//! decision keeps the original). Hop-by-hop and framing fields are always
//! rewritten by the runtime, whatever the steps did. Failures after the
//! action (upstream down, timeouts, bad bodies) are answered by the runtime
//! with 502/503/504/400/408/413 and reported to [`Gateway::logging`] as a
//! [`ProxyError`].
//!
//! ```text
//! #[derive(Clone, Copy)] enum Route { Health, Api }
//! impl Gateway for MyGateway {
//!     type Route = Route;
//!     type Ctx = ();
//!     fn upstreams(&self) -> Vec<Upstream> { vec![Upstream::single("api", addr)] }
//!     fn route(&self, req: &RequestHead) -> Route {
//!         if req.path_only() == b"/healthz" { Route::Health } else { Route::Api }
//!     }
//!     fn request(&self, route: Route, req: &mut RequestHead, _: &mut ()) -> Action {
//!         match route {
//!             Route::Health => Action::Respond { status: 200, body: Cow::Borrowed(b"ok\n"), content_type: "text/plain" },
//!             Route::Api => { req.headers_mut().set("x-api", b"1"); Action::Proxy { upstream: 0, strip_prefix: Some("/api") } }
//!         }
//!     }
//! }
//! ```

use std::borrow::Cow;

use crate::http::{RequestHead, ResponseHead};
use crate::lb::Upstream;
use crate::proxy::ProxyError;

/// What to do with a request, decided by [`Gateway::request`].
#[derive(Debug, Clone)]
pub enum Action {
    /// Answer locally with a body.
    Respond {
        /// Status code.
        status: u16,
        /// Body bytes (static bodies cost no allocation).
        body: Cow<'static, [u8]>,
        /// `content-type` of the body.
        content_type: &'static str,
    },
    /// Answer with a redirect (`location` header, empty body).
    Redirect {
        /// Target URL.
        location: Cow<'static, str>,
        /// 301, 302, 303, 307 or 308.
        status: u16,
    },
    /// Forward to an upstream of [`Gateway::upstreams`].
    Proxy {
        /// Index into [`Gateway::upstreams`].
        upstream: usize,
        /// Path prefix removed before forwarding (on a segment boundary).
        strip_prefix: Option<&'static str>,
    },
}

/// Summary handed to [`Gateway::logging`].
#[derive(Debug, Clone, Copy)]
pub struct RequestLog<'a> {
    /// Status sent to the client (0 if none was sent).
    pub status: u16,
    /// The failure, if any.
    pub error: Option<&'a ProxyError>,
}

/// Implemented by each generated gateway (and by hand in the example).
///
/// One instance lives on each worker thread (see [`crate::serve`]), so it
/// needs no `Send` or `Sync` and may hold per-worker state.
pub trait Gateway: 'static {
    /// The route decision: a small generated enum, usually `Copy`.
    type Route: Copy;
    /// Per-request state carried between the phases.
    type Ctx: Default;

    /// The upstreams that [`Action::Proxy`] indexes. Called once per worker
    /// at start; the list does not change afterwards.
    fn upstreams(&self) -> Vec<Upstream>;

    /// Decides the route from the validated head (method, host, path,
    /// headers). Runs before anything else; no default.
    fn route(&self, req: &RequestHead) -> Self::Route;

    /// Runs the route's request steps (edit `req.headers_mut()`) and
    /// returns its action. No default.
    fn request(&self, route: Self::Route, req: &mut RequestHead, ctx: &mut Self::Ctx) -> Action;

    /// Runs the route's response steps on the response head before it is
    /// sent: an upstream's response, or the gateway's own answer for
    /// [`Action::Respond`] and [`Action::Redirect`] (a head with only the
    /// status; headers set there are added). Not called for error answers
    /// (400, 502, ...). Default: nothing.
    fn response(&self, route: Self::Route, resp: &mut ResponseHead, ctx: &mut Self::Ctx) {
        let _ = (route, resp, ctx);
    }

    /// Runs once per request after the exchange ended (success or not).
    /// `route` is `None` when the head was rejected before routing.
    /// Default: nothing.
    fn logging(&self, route: Option<Self::Route>, log: &RequestLog<'_>, ctx: &mut Self::Ctx) {
        let _ = (route, log, ctx);
    }
}
