// Package nsapi is the contract between the NS and its clients: request and answer types
// with their validation, the HTTP client, enrollment and the credentials kept on disk
// (Enrollment), the registration loop (Registrar), job grants and event batches. Site
// services and agents use it without linking the NS server or its store.
package nsapi
