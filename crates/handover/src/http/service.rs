//! What [`serve`](super::serve) serves: an async closure or any tower
//! `Service` (an axum `Router`), both turned into one internal [`Handler`].
//!
//! The two forms are told apart by a marker type parameter ([`Closure`] or
//! [`Tower`]), the way axum tells its handler forms apart: the compiler picks
//! the one impl a type satisfies, so a caller never names the marker. A
//! closure is not a tower `Service` and a `Router` is not a closure, so no
//! type is both.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};

pub(super) type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Something [`serve`](super::serve) can answer requests with:
///
/// - an async closure `Fn(Request<Incoming>) -> impl Future<Output =
///   Result<Response<B>, E>>` that is `Clone + Send + Sync`;
/// - a tower `Service<Request<Incoming>, Response = Response<B>>` that is
///   `Clone + Send + Sync` with a `Send` future: an axum `Router`, or any
///   service stack built with tower layers. Each request is served by a clone
///   (after `poll_ready`), as hyper-util's tower adapter does.
///
/// `M` is [`Closure`] or [`Tower`]; it is inferred.
pub trait HttpService<M>: Send + 'static {
    /// The handler this becomes.
    #[doc(hidden)]
    type Handler: Handler;

    /// Turns it into the handler every connection shares.
    #[doc(hidden)]
    fn into_handler(self) -> Self::Handler;
}

/// Marks the closure form of [`HttpService`].
#[derive(Debug)]
pub enum Closure {}

/// Marks the tower `Service` form of [`HttpService`].
#[derive(Debug)]
pub enum Tower {}

/// What the connection code calls: a cloneable async function from a request
/// to a response, its bounds named once.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The response body.
    type Body: Body<Data: Send, Error: Into<BoxError>> + Send + 'static;
    /// The handler's error (the connection ends with it).
    type Error: Into<BoxError> + 'static;
    /// The response, to come.
    type Future: Future<Output = Result<Response<Self::Body>, Self::Error>> + Send + 'static;
    /// Answers one request.
    fn call(&self, request: Request<Incoming>) -> Self::Future;
}

/// The closure form, as a [`Handler`].
#[derive(Clone)]
pub struct FnHandler<F>(F);

impl<F, Fut, B, E> HttpService<Closure> for F
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    E: Into<BoxError> + 'static,
{
    type Handler = FnHandler<F>;

    fn into_handler(self) -> FnHandler<F> {
        FnHandler(self)
    }
}

impl<F, Fut, B, E> Handler for FnHandler<F>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    E: Into<BoxError> + 'static,
{
    type Body = B;
    type Error = E;
    type Future = Fut;

    fn call(&self, request: Request<Incoming>) -> Fut {
        (self.0)(request)
    }
}

/// The tower form, as a [`Handler`].
#[derive(Clone)]
pub struct TowerHandler<S>(S);

impl<S, B> HttpService<Tower> for S
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Handler = TowerHandler<S>;

    fn into_handler(self) -> TowerHandler<S> {
        TowerHandler(self)
    }
}

/// A tower service's response, boxed: its future borrows the clone it was
/// called on, which the box owns.
type TowerFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

impl<S, B> Handler for TowerHandler<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Body = B;
    type Error = S::Error;
    type Future = TowerFuture<B, S::Error>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        // A clone per request, readied first: the tower contract (a service
        // may only be called once it said it is ready).
        let mut service = self.0.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
            service.call(request).await
        })
    }
}
