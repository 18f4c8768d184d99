// The API documentation: Swagger UI (vendored) reading /openapi.json. No network
// beyond this server: the validator badge is off.
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  validatorUrl: null,
  deepLinking: true,
  tryItOutEnabled: true,
});
