//! How the steps of the request path become tower layers.
//!
//! A [`Step`] is an async function of the request and [`Next`], what comes
//! after it. [`chain`] makes one layer of several steps in order, composed
//! statically: one boxed future per request for the whole chain, not one
//! per step. axum's `from_fn` would box the rest of the stack and its
//! future again for every step, clone it, and take the request apart and
//! back together to run extractors; with eight steps that cost more than
//! the steps themselves (BENCHMARKS.md, "Request path").

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use tower::{Layer, ServiceExt};

use super::AppState;

/// What a step hands the request to: the next step, or the service below.
pub trait Next: Send + 'static {
    fn run(self, request: Request) -> impl Future<Output = Response> + Send;
}

/// One step of the request path (`request_path.rs` declares one per layer
/// with [`step!`](crate::api::step::step)).
pub trait Step: Copy + Send + Sync + 'static {
    fn run<N: Next>(self, state: AppState, request: Request, next: N) -> impl Future<Output = Response> + Send;
}

/// Declares a [`Step`] named `$name` that runs the async fn `$f(state, request, next)`.
macro_rules! step {
    ($(#[$doc:meta])* $name:ident => $f:path) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        pub struct $name;

        impl $crate::api::step::Step for $name {
            fn run<N: $crate::api::step::Next>(
                self,
                state: $crate::api::AppState,
                request: axum::extract::Request,
                next: N,
            ) -> impl std::future::Future<Output = axum::response::Response> + Send {
                $f(state, request, next)
            }
        }
    };
}
pub(crate) use step;

/// The steps of one [`chain`], as a list: `(first, (second, ()))`.
pub trait Steps: Copy + Send + Sync + 'static {
    fn then<S: Below>(self, state: &AppState, below: S) -> impl Next;
}

impl Steps for () {
    fn then<S: Below>(self, _: &AppState, below: S) -> impl Next {
        Bottom(below)
    }
}

impl<T: Step, R: Steps> Steps for (T, R) {
    fn then<S: Below>(self, state: &AppState, below: S) -> impl Next {
        Then { step: self.0, state: state.clone(), next: self.1.then(state, below) }
    }
}

/// The steps, in the order a request meets them: `steps![A, B, C]`.
macro_rules! steps {
    () => { () };
    ($first:expr $(, $rest:expr)* $(,)?) => { ($first, $crate::api::step::steps!($($rest),*)) };
}
pub(crate) use steps;

/// A step and what follows it.
struct Then<T, N> {
    step: T,
    state: AppState,
    next: N,
}

impl<T: Step, N: Next> Next for Then<T, N> {
    fn run(self, request: Request) -> impl Future<Output = Response> + Send {
        self.step.run(self.state, request, self.next)
    }
}

/// What a chain calls last: the service below it (the router, a handler).
pub trait Below:
    tower::Service<Request, Response = Response, Error = Infallible, Future: Send> + Send + 'static
{
}
impl<S> Below for S where
    S: tower::Service<Request, Response = Response, Error = Infallible, Future: Send> + Send + 'static
{
}

/// The end of a chain.
struct Bottom<S>(S);

impl<S: Below> Next for Bottom<S> {
    async fn run(self, request: Request) -> Response {
        match self.0.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// One layer running `steps` in order, with the state they share.
pub fn chain<T: Steps>(state: &AppState, steps: T) -> ChainLayer<T> {
    ChainLayer { state: state.clone(), steps }
}

#[derive(Clone)]
pub struct ChainLayer<T> {
    state: AppState,
    steps: T,
}

impl<T: Copy, S> Layer<S> for ChainLayer<T> {
    type Service = ChainService<T, S>;
    fn layer(&self, below: S) -> ChainService<T, S> {
        ChainService { state: self.state.clone(), steps: self.steps, below }
    }
}

#[derive(Clone)]
pub struct ChainService<T, S> {
    state: AppState,
    steps: T,
    below: S,
}

impl<T, S> tower::Service<Request> for ChainService<T, S>
where
    T: Steps,
    S: Below + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The service below is made ready when the chain reaches it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let first = self.steps.then(&self.state, self.below.clone());
        Box::pin(async move { Ok(first.run(request).await) })
    }
}
