//! The OpenAPI 3.1 description of the HTTP API, generated from the handlers' own
//! annotations and the request and response types they (de)serialize, so it cannot drift from
//! what the server does; served at `GET /api/openapi.json` (with the API key, like everything
//! under `/api/`).

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chorus broker API",
        description = "Publish into Chorus, read channels' history and list the gateway nodes. \
            Every /api/ path needs `Authorization: Bearer <API key>`. The Pusher HTTP API under \
            /apps/{app_id}/ is authenticated by the Pusher signature instead (docs/pusher.md)."
    ),
    paths(
        http::publish,
        http::publish_batch,
        http::broadcast,
        http::history,
        http::presence,
        http::presence_stats,
        http::disconnect,
        http::subscribe,
        http::unsubscribe,
        http::channels,
        http::nodes,
        http::healthz,
        http::readyz,
        crate::pusher::events,
        crate::pusher::batch_events,
        crate::pusher::channels,
        crate::pusher::channel,
        crate::pusher::users,
        crate::pusher::terminate
    ),
    modifiers(&ApiKey)
)]
pub struct ApiDoc;

/// The API key as an HTTP bearer scheme named `api_key`.
struct ApiKey;

impl Modify for ApiKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// `GET /api/openapi.json`.
pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_may_be_any_json_value() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let data = &doc["components"]["schemas"]["PublishRequest"]["properties"]["data"];
        assert!(
            data.get("type").is_none() || data["type"] != "object",
            "data is any JSON value, not only an object: {data}"
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["api_key"]["scheme"],
            "bearer"
        );
    }
}
