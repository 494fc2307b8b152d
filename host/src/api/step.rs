//! How a step of the request path becomes a tower layer.
//!
//! axum's `from_fn` would do, but it boxes the rest of the stack and its
//! future again for every step of every request, and takes the request
//! apart and back together to run extractors; with eight steps that cost
//! more than the steps themselves (BENCHMARKS.md, "Request path"). A
//! [`Step`] gets the request and [`Next`], the rest of the stack, as it is.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use tower::{Layer, Service, ServiceExt};

use super::AppState;

/// What a step may call next: the rest of the stack.
pub trait Inner: Service<Request, Response = Response, Error = Infallible, Future: Send> + Send + 'static {}
impl<S> Inner for S where S: Service<Request, Response = Response, Error = Infallible, Future: Send> + Send + 'static {}

/// The rest of the stack, as a step sees it.
pub struct Next<S>(S);

impl<S: Inner> Next<S> {
    pub async fn run(self, request: Request) -> Response {
        match self.0.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// One step of the request path: `request_path.rs` implements one per
/// layer with [`step!`](crate::api::step::step).
pub trait Step: Clone + Send + Sync + 'static {
    fn run<S: Inner>(&self, state: AppState, request: Request, next: Next<S>) -> impl Future<Output = Response> + Send;
}

/// Declares a [`Step`] named `$name` that runs the async fn `$f(state, request, next)`.
macro_rules! step {
    ($(#[$doc:meta])* $name:ident => $f:path) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        pub struct $name;

        impl $crate::api::step::Step for $name {
            fn run<S: $crate::api::step::Inner>(
                &self,
                state: $crate::api::AppState,
                request: axum::extract::Request,
                next: $crate::api::step::Next<S>,
            ) -> impl std::future::Future<Output = axum::response::Response> + Send {
                $f(state, request, next)
            }
        }
    };
}
pub(crate) use step;

/// The layer of a step, with the state it runs with.
#[derive(Clone)]
pub struct StepLayer<T> {
    state: AppState,
    step: T,
}

pub fn layer<T: Step>(state: &AppState, step: T) -> StepLayer<T> {
    StepLayer { state: state.clone(), step }
}

impl<T: Clone, S> Layer<S> for StepLayer<T> {
    type Service = StepService<T, S>;
    fn layer(&self, inner: S) -> StepService<T, S> {
        StepService { state: self.state.clone(), step: self.step.clone(), inner }
    }
}

#[derive(Clone)]
pub struct StepService<T, S> {
    state: AppState,
    step: T,
    inner: S,
}

impl<T, S> Service<Request> for StepService<T, S>
where
    T: Step,
    S: Inner + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // `Next::run` waits for the inner service to be ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let inner = self.inner.clone();
        let (state, step) = (self.state.clone(), self.step.clone());
        Box::pin(async move { Ok(step.run(state, request, Next(inner)).await) })
    }
}
