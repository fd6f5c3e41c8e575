// Krustlet's http test workload: a wasi:http/proxy component (one instance per request).
//
// Routes:
//   GET  /             200 "hello from <POD_NAME>" (the POD_NAME environment variable)
//   GET  /healthz      200 "ok", or 500 "unhealthy" once the wall clock reaches the unix
//                      time in HEALTHZ_FAIL_AFTER (unset: always healthy)
//   POST /grpc.health.v1.Health/Check
//                      the gRPC health check (HTTP/2): SERVING, or NOT_SERVING as /healthz fails
//   GET  /sleep?ms=N   waits N milliseconds (at most 10 minutes), then 200 "slept N ms"
//   POST /echo         200 with the request body
//   GET  /alloc?mb=N   allocates and touches N MiB, then 200 (memory limit tests)
//   GET  /trap         traps (the server answers 500 and keeps serving)
//   GET  /fetch?url=http://HOST[:PORT]/PATH
//                      an outgoing GET (wasi:http/outgoing-handler): 200 "fetched STATUS: BODY",
//                      or 502 "fetch failed: ERROR-CODE" (e.g. HTTP-request-denied)
//   anything else      404
//
// Written against the C bindings that build.rs generates with wit-bindgen-c from
// wit/http.wit (the proxy world plus wasi:cli/environment).

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_workload.h"

#define MAX_BODY (16u << 20)
#define WRITE_CHUNK 4096u

// The value of environment variable `name` (a malloc'd string), or NULL.
static char *env_get(const char *name) {
    http_workload_list_tuple2_string_string_t env;
    wasi_cli_environment_get_environment(&env);
    char *found = NULL;
    size_t name_len = strlen(name);
    for (size_t i = 0; i < env.len; i++) {
        http_workload_string_t *key = &env.ptr[i].f0;
        http_workload_string_t *value = &env.ptr[i].f1;
        if (!found && key->len == name_len && memcmp(key->ptr, name, name_len) == 0) {
            found = malloc(value->len + 1);
            if (found) {
                memcpy(found, value->ptr, value->len);
                found[value->len] = '\0';
            }
        }
    }
    http_workload_list_tuple2_string_string_free(&env);
    return found;
}

// The value of query parameter `name` in `query` (after '?'), as a number; `fallback` if absent.
static unsigned long query_number(const char *path, const char *name, unsigned long fallback) {
    const char *query = strchr(path, '?');
    if (!query) {
        return fallback;
    }
    size_t name_len = strlen(name);
    const char *p = query + 1;
    while (*p) {
        if (strncmp(p, name, name_len) == 0 && p[name_len] == '=') {
            return strtoul(p + name_len + 1, NULL, 10);
        }
        const char *amp = strchr(p, '&');
        if (!amp) {
            break;
        }
        p = amp + 1;
    }
    return fallback;
}

// Whether the path (without its query) is `want`.
static bool route_is(const char *path, const char *want) {
    size_t n = strlen(want);
    return strncmp(path, want, n) == 0 && (path[n] == '\0' || path[n] == '?');
}

// Reads the whole of `body` (at most MAX_BODY bytes) into a malloc'd buffer.
static uint8_t *read_incoming_body(wasi_http_types_own_incoming_body_t body, size_t *len) {
    *len = 0;
    wasi_http_types_own_input_stream_t stream;
    if (!wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(body),
                                                     &stream)) {
        wasi_http_types_incoming_body_drop_own(body);
        return NULL;
    }
    size_t cap = 4096;
    uint8_t *buf = malloc(cap);
    while (buf) {
        http_workload_list_u8_t chunk;
        wasi_io_streams_stream_error_t error;
        if (!wasi_io_streams_method_input_stream_blocking_read(
                wasi_io_streams_borrow_input_stream(stream), 65536, &chunk, &error)) {
            // Closed is the end of the body; a failure ends it too.
            wasi_io_streams_stream_error_free(&error);
            break;
        }
        if (*len + chunk.len > MAX_BODY) {
            http_workload_list_u8_free(&chunk);
            break;
        }
        while (*len + chunk.len > cap) {
            cap *= 2;
            uint8_t *grown = realloc(buf, cap);
            if (!grown) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = grown;
        }
        if (buf) {
            memcpy(buf + *len, chunk.ptr, chunk.len);
            *len += chunk.len;
        }
        http_workload_list_u8_free(&chunk);
    }
    wasi_io_streams_input_stream_drop_own(stream);
    wasi_http_types_incoming_body_drop_own(body);
    return buf;
}

// Reads the whole request body (at most MAX_BODY bytes) into a malloc'd buffer.
static uint8_t *read_body(wasi_http_types_borrow_incoming_request_t request, size_t *len) {
    *len = 0;
    wasi_http_types_own_incoming_body_t body;
    if (!wasi_http_types_method_incoming_request_consume(request, &body)) {
        return NULL;
    }
    return read_incoming_body(body, len);
}

// Appends the field `name: value` to `fields`.
static void add_field(wasi_http_types_own_fields_t fields, const char *name, const char *value) {
    http_workload_string_t field_name;
    http_workload_string_set(&field_name, name);
    wasi_http_types_field_value_t field_value = {.ptr = (uint8_t *)value, .len = strlen(value)};
    wasi_http_types_header_error_t header_error;
    wasi_http_types_method_fields_append(wasi_http_types_borrow_fields(fields), &field_name,
                                         &field_value, &header_error);
}

// Sends `status` with a body of `content_type`: the response first, then the body in chunks,
// then the trailer `trailer_name: trailer_value` if there is one (gRPC's status).
static void respond_with(wasi_http_types_own_response_outparam_t out, uint16_t status,
                         const char *content_type, const uint8_t *body, size_t len,
                         const char *trailer_name, const char *trailer_value) {
    wasi_http_types_own_fields_t headers = wasi_http_types_constructor_fields();
    add_field(headers, "content-type", content_type);
    wasi_http_types_own_outgoing_response_t response =
        wasi_http_types_constructor_outgoing_response(headers);
    wasi_http_types_method_outgoing_response_set_status_code(
        wasi_http_types_borrow_outgoing_response(response), status);
    wasi_http_types_own_outgoing_body_t outgoing;
    if (!wasi_http_types_method_outgoing_response_body(
            wasi_http_types_borrow_outgoing_response(response), &outgoing)) {
        abort();
    }
    wasi_http_types_result_own_outgoing_response_error_code_t result = {
        .is_err = false,
        .val = {.ok = response},
    };
    wasi_http_types_static_response_outparam_set(out, &result);

    wasi_http_types_own_output_stream_t stream;
    if (wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(outgoing),
                                                   &stream)) {
        size_t done = 0;
        while (done < len) {
            size_t n = len - done < WRITE_CHUNK ? len - done : WRITE_CHUNK;
            http_workload_list_u8_t chunk = {.ptr = (uint8_t *)body + done, .len = n};
            wasi_io_streams_stream_error_t error;
            if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(
                    wasi_io_streams_borrow_output_stream(stream), &chunk, &error)) {
                wasi_io_streams_stream_error_free(&error);
                break;
            }
            done += n;
        }
        wasi_io_streams_output_stream_drop_own(stream);
    }
    wasi_http_types_error_code_t finish_error;
    wasi_http_types_own_trailers_t trailers;
    if (trailer_name) {
        trailers = wasi_http_types_constructor_fields();
        add_field(trailers, trailer_name, trailer_value);
    }
    if (!wasi_http_types_static_outgoing_body_finish(outgoing, trailer_name ? &trailers : NULL,
                                                     &finish_error)) {
        wasi_http_types_error_code_free(&finish_error);
    }
}

// Sends `status` with a text body.
static void respond(wasi_http_types_own_response_outparam_t out, uint16_t status,
                    const uint8_t *body, size_t len) {
    respond_with(out, status, "text/plain; charset=utf-8", body, len, NULL, NULL);
}

// Whether /healthz and the gRPC health check say healthy: until the wall clock reaches
// HEALTHZ_FAIL_AFTER (unix seconds), if it is set.
static bool healthy(void) {
    char *after = env_get("HEALTHZ_FAIL_AFTER");
    bool ok = true;
    if (after) {
        wasi_clocks_wall_clock_datetime_t now;
        wasi_clocks_wall_clock_now(&now);
        ok = now.seconds < strtoull(after, NULL, 10);
        free(after);
    }
    return ok;
}

static void respond_text(wasi_http_types_own_response_outparam_t out, uint16_t status,
                         const char *text) {
    respond(out, status, (const uint8_t *)text, strlen(text));
}

// Blocks for `ms` milliseconds on a monotonic-clock pollable.
static void sleep_ms(unsigned long ms) {
    wasi_io_poll_own_pollable_t pollable =
        wasi_clocks_monotonic_clock_subscribe_duration((uint64_t)ms * 1000000ull);
    wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(pollable));
    wasi_io_poll_pollable_drop_own(pollable);
}

// The wasi:http error-code names this workload reports (the rest by number).
static const char *error_code_name(uint8_t tag) {
    switch (tag) {
    case WASI_HTTP_TYPES_ERROR_CODE_DNS_TIMEOUT: return "DNS-timeout";
    case WASI_HTTP_TYPES_ERROR_CODE_DNS_ERROR: return "DNS-error";
    case WASI_HTTP_TYPES_ERROR_CODE_DESTINATION_NOT_FOUND: return "destination-not-found";
    case WASI_HTTP_TYPES_ERROR_CODE_DESTINATION_UNAVAILABLE: return "destination-unavailable";
    case WASI_HTTP_TYPES_ERROR_CODE_CONNECTION_REFUSED: return "connection-refused";
    case WASI_HTTP_TYPES_ERROR_CODE_CONNECTION_TIMEOUT: return "connection-timeout";
    case WASI_HTTP_TYPES_ERROR_CODE_HTTP_REQUEST_DENIED: return "HTTP-request-denied";
    case WASI_HTTP_TYPES_ERROR_CODE_HTTP_REQUEST_URI_INVALID: return "HTTP-request-URI-invalid";
    case WASI_HTTP_TYPES_ERROR_CODE_INTERNAL_ERROR: return "internal-error";
    default: return NULL;
    }
}

// Answers 502 "fetch failed: <error code>".
static void fetch_failed(wasi_http_types_own_response_outparam_t out, wasi_http_types_error_code_t *error) {
    char text[128];
    const char *name = error_code_name(error->tag);
    if (name) {
        snprintf(text, sizeof text, "fetch failed: %s\n", name);
    } else {
        snprintf(text, sizeof text, "fetch failed: error code %u\n", error->tag);
    }
    wasi_http_types_error_code_free(error);
    respond(out, 502, (const uint8_t *)text, strlen(text));
}

// GET `url` (http://authority/path) with wasi:http/outgoing-handler; answers with what came.
static void fetch(wasi_http_types_own_response_outparam_t out, const char *url) {
    const char *prefix = "http://";
    if (strncmp(url, prefix, strlen(prefix)) != 0) {
        respond_text(out, 400, "fetch: url must start with http://\n");
        return;
    }
    const char *authority_start = url + strlen(prefix);
    const char *slash = strchr(authority_start, '/');
    size_t authority_len = slash ? (size_t)(slash - authority_start) : strlen(authority_start);
    char *authority = strndup(authority_start, authority_len);
    if (!authority) {
        abort();
    }
    wasi_http_types_own_outgoing_request_t request =
        wasi_http_types_constructor_outgoing_request(wasi_http_types_constructor_fields());
    wasi_http_types_borrow_outgoing_request_t borrowed =
        wasi_http_types_borrow_outgoing_request(request);
    wasi_http_types_method_t method = {.tag = WASI_HTTP_TYPES_METHOD_GET};
    wasi_http_types_method_outgoing_request_set_method(borrowed, &method);
    wasi_http_types_scheme_t scheme = {.tag = WASI_HTTP_TYPES_SCHEME_HTTP};
    wasi_http_types_method_outgoing_request_set_scheme(borrowed, &scheme);
    http_workload_string_t value;
    http_workload_string_set(&value, authority);
    wasi_http_types_method_outgoing_request_set_authority(borrowed, &value);
    http_workload_string_set(&value, slash ? slash : "/");
    wasi_http_types_method_outgoing_request_set_path_with_query(borrowed, &value);
    free(authority);

    wasi_http_outgoing_handler_own_future_incoming_response_t future;
    wasi_http_outgoing_handler_error_code_t error;
    if (!wasi_http_outgoing_handler_handle(request, NULL, &future, &error)) {
        fetch_failed(out, &error);
        return;
    }
    wasi_http_types_borrow_future_incoming_response_t pending =
        wasi_http_types_borrow_future_incoming_response(future);
    wasi_io_poll_own_pollable_t pollable =
        wasi_http_types_method_future_incoming_response_subscribe(pending);
    wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(pollable));
    wasi_io_poll_pollable_drop_own(pollable);
    wasi_http_types_result_result_own_incoming_response_error_code_void_t result;
    bool ready = wasi_http_types_method_future_incoming_response_get(pending, &result);
    wasi_http_types_future_incoming_response_drop_own(future);
    if (!ready || result.is_err) {
        respond_text(out, 500, "fetch: the response future was not ready\n");
        return;
    }
    if (result.val.ok.is_err) {
        fetch_failed(out, &result.val.ok.val.err);
        return;
    }
    wasi_http_types_own_incoming_response_t response = result.val.ok.val.ok;
    wasi_http_types_borrow_incoming_response_t got =
        wasi_http_types_borrow_incoming_response(response);
    unsigned status = wasi_http_types_method_incoming_response_status(got);
    size_t len = 0;
    uint8_t *body = NULL;
    wasi_http_types_own_incoming_body_t incoming;
    if (wasi_http_types_method_incoming_response_consume(got, &incoming)) {
        body = read_incoming_body(incoming, &len);
    }
    wasi_http_types_incoming_response_drop_own(response);
    char head[64];
    int head_len = snprintf(head, sizeof head, "fetched %u: ", status);
    uint8_t *text = malloc((size_t)head_len + len);
    if (!text) {
        abort();
    }
    memcpy(text, head, (size_t)head_len);
    if (body) {
        memcpy(text + head_len, body, len);
    }
    respond(out, 200, text, (size_t)head_len + len);
    free(text);
    free(body);
}

void exports_wasi_http_incoming_handler_handle(
    exports_wasi_http_incoming_handler_own_incoming_request_t request,
    exports_wasi_http_incoming_handler_own_response_outparam_t response_out) {
    wasi_http_types_borrow_incoming_request_t borrowed =
        wasi_http_types_borrow_incoming_request(request);
    http_workload_string_t raw_path;
    char *path;
    if (wasi_http_types_method_incoming_request_path_with_query(borrowed, &raw_path)) {
        path = malloc(raw_path.len + 1);
        if (!path) {
            abort();
        }
        memcpy(path, raw_path.ptr, raw_path.len);
        path[raw_path.len] = '\0';
        http_workload_string_free(&raw_path);
    } else {
        path = strdup("/");
    }
    char text[256];

    if (route_is(path, "/")) {
        char *pod = env_get("POD_NAME");
        snprintf(text, sizeof text, "hello from %s\n", pod ? pod : "unknown");
        free(pod);
        wasi_http_types_incoming_request_drop_own(request);
        respond_text(response_out, 200, text);
    } else if (route_is(path, "/healthz")) {
        wasi_http_types_incoming_request_drop_own(request);
        bool ok = healthy();
        respond_text(response_out, ok ? 200 : 500, ok ? "ok\n" : "unhealthy\n");
    } else if (route_is(path, "/grpc.health.v1.Health/Check")) {
        // The gRPC health protocol (grpc probes, over HTTP/2): a framed HealthCheckResponse
        // {status = SERVING (1) or NOT_SERVING (2)} and the trailer grpc-status: 0.
        wasi_http_types_incoming_request_drop_own(request);
        uint8_t message[7] = {0, 0, 0, 0, 2, 0x08, healthy() ? 1 : 2};
        respond_with(response_out, 200, "application/grpc", message, sizeof message,
                     "grpc-status", "0");
    } else if (route_is(path, "/sleep")) {
        wasi_http_types_incoming_request_drop_own(request);
        unsigned long ms = query_number(path, "ms", 1000);
        if (ms > 600000) {
            ms = 600000;
        }
        sleep_ms(ms);
        snprintf(text, sizeof text, "slept %lu ms\n", ms);
        respond_text(response_out, 200, text);
    } else if (route_is(path, "/echo")) {
        size_t len = 0;
        uint8_t *body = read_body(borrowed, &len);
        wasi_http_types_incoming_request_drop_own(request);
        respond(response_out, 200, body ? body : (const uint8_t *)"", body ? len : 0);
        free(body);
    } else if (route_is(path, "/alloc")) {
        wasi_http_types_incoming_request_drop_own(request);
        unsigned long mb = query_number(path, "mb", 1);
        volatile uint8_t *block = malloc(mb << 20);
        if (!block) {
            respond_text(response_out, 507, "out of memory\n");
        } else {
            for (unsigned long i = 0; i < (mb << 20); i += 4096) {
                block[i] = 1;
            }
            snprintf(text, sizeof text, "allocated %lu MiB\n", mb);
            respond_text(response_out, 200, text);
        }
    } else if (route_is(path, "/fetch")) {
        wasi_http_types_incoming_request_drop_own(request);
        const char *url = strstr(path, "url=");
        if (url) {
            fetch(response_out, url + 4);
        } else {
            respond_text(response_out, 400, "fetch: ?url=http://host:port/path is required\n");
        }
    } else if (route_is(path, "/trap")) {
        __builtin_trap();
    } else {
        wasi_http_types_incoming_request_drop_own(request);
        respond_text(response_out, 404, "not found\n");
    }
    free(path);
}
