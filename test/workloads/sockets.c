// Krustlet's sockets test workload: a wasi:cli/command component (a C `main` on wasi-libc,
// made a component with the preview-1 command adapter) that uses wasi:sockets 0.2 over IPv4.
//
// Subcommands (argv[1]):
//   tcp-echo PORT        listen on TCP 0.0.0.0:PORT, print "listening tcp PORT", then serve
//                        connections one after another: print "accepted ADDR:PORT" (the peer)
//                        for each and echo every byte back until the peer shuts down its send
//                        side; runs until killed
//   udp-echo PORT        bind UDP 0.0.0.0:PORT, print "listening udp PORT", then send every
//                        datagram back to its sender; runs until killed
//   tcp-send HOST PORT MESSAGE [--repeat N] [--interval-ms M]
//                        connect to HOST:PORT, send MESSAGE, shut down the send side, read the
//                        reply until the peer closes and print it to stdout exactly as received
//   udp-send HOST PORT MESSAGE [--repeat N] [--interval-ms M]
//                        send MESSAGE as one datagram to HOST:PORT from an ephemeral port, wait
//                        up to 5 seconds for one reply datagram (from anyone) and print it to
//                        stdout exactly as received
//
// HOST is an IPv4 literal or a name resolved with wasi:sockets/ip-name-lookup (the first IPv4
// address is used). With --repeat N the whole exchange (resolving included) runs N times,
// M milliseconds apart (default 1000): each reply is printed as it comes, each failure is
// reported as below and the next attempt still runs; the exit status is the last attempt's.
//
// A failure prints one line "<subcommand> HOST:PORT: <step>: <reason>" to stderr and exits 2
// (the echo servers: "tcp-echo 0.0.0.0:PORT: ...", and only for setup failures; a failing
// connection or datagram is reported the same way and serving goes on). Steps: resolve,
// create, bind, listen, accept, connect, stream, send, shutdown, receive. The reason is the
// name of a wasi:sockets/network error-code ("access-denied", "connection-refused",
// "name-unresolvable", ...), "closed" for a stream the peer closed early, or "timeout" for a
// udp-send without a reply. Bad arguments print the usage to stderr and exit 64.
//
// Written against the C bindings that build.rs generates with wit-bindgen-c from
// wit/sockets.wit; stdio and argv are wasi-libc's (preview 1, through the adapter), and a
// failing status leaves through wasi:cli/exit.exit-with-code so that 2 and 64 reach the host.

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sockets_workload.h"

#define EXIT_FAILED 2
#define EXIT_USAGE 64

// Bytes asked of one blocking-read.
#define READ_CHUNK 65536u
// blocking-write-and-flush takes at most 4096 bytes a call.
#define WRITE_CHUNK 4096u
// Datagrams asked of one incoming-datagram-stream.receive.
#define MAX_DATAGRAMS 16u
#define UDP_REPLY_TIMEOUT_NS (5ull * 1000000000ull)
#define DEFAULT_INTERVAL_MS 1000ul
#define NS_PER_MS 1000000ull

typedef wasi_sockets_network_error_code_t error_code_t;
typedef wasi_sockets_network_ip_socket_address_t socket_address_t;
typedef wasi_io_poll_borrow_pollable_t pollable_t;

#define WOULD_BLOCK WASI_SOCKETS_NETWORK_ERROR_CODE_WOULD_BLOCK

// A failed step: what was being done, and why.
typedef struct {
    const char *step;
    const char *reason;
} failure_t;

static const failure_t OK = {NULL, NULL};

static bool failed(failure_t f) {
    return f.step != NULL;
}

// The names of wasi:sockets/network's error-code cases, in their order (their C values).
static const char *const ERROR_CODE_NAMES[] = {
    "unknown",
    "access-denied",
    "not-supported",
    "invalid-argument",
    "out-of-memory",
    "timeout",
    "concurrency-conflict",
    "not-in-progress",
    "would-block",
    "invalid-state",
    "new-socket-limit",
    "address-not-bindable",
    "address-in-use",
    "remote-unreachable",
    "connection-refused",
    "connection-reset",
    "connection-aborted",
    "datagram-too-large",
    "name-unresolvable",
    "temporary-resolver-failure",
    "permanent-resolver-failure",
};
#define ERROR_CODE_COUNT (sizeof ERROR_CODE_NAMES / sizeof ERROR_CODE_NAMES[0])

static const char *error_code_name(error_code_t code) {
    return code < ERROR_CODE_COUNT ? ERROR_CODE_NAMES[code] : "unknown";
}

static failure_t fail(const char *step, error_code_t code) {
    return (failure_t){step, error_code_name(code)};
}

// The error-code that a host's debug string of a wasi:io error names, as an index into
// ERROR_CODE_NAMES, or 0 (unknown). wasi:sockets/network.network-error-code, which would
// answer this properly, is still @unstable in 0.2.12, so this recognises what wasmtime
// writes: "connection-reset (error 15)" or "ConnectionReset".
static size_t error_code_in(const char *debug) {
    for (size_t i = 1; i < ERROR_CODE_COUNT; i++) {
        size_t n = strlen(ERROR_CODE_NAMES[i]);
        if (strncmp(debug, ERROR_CODE_NAMES[i], n) == 0 &&
            (debug[n] == '\0' || debug[n] == ' ')) {
            return i;
        }
    }
    const char *number = strstr(debug, "(error ");
    if (number) {
        unsigned long code = strtoul(number + strlen("(error "), NULL, 10);
        if (code < ERROR_CODE_COUNT) {
            return code;
        }
    }
    for (size_t i = 1; i < ERROR_CODE_COUNT; i++) {
        // kebab-case to UpperCamelCase: "connection-reset" -> "ConnectionReset".
        char camel[32];
        size_t len = 0;
        bool upper = true;
        for (const char *c = ERROR_CODE_NAMES[i]; *c && len + 1 < sizeof camel; c++) {
            if (*c == '-') {
                upper = true;
                continue;
            }
            camel[len++] = upper ? (char)(*c - 'a' + 'A') : *c;
            upper = false;
        }
        camel[len] = '\0';
        if (strstr(debug, camel)) {
            return i;
        }
    }
    return 0;
}

// The failure of `step` from a wasi:io stream error: "closed", or the error-code the error
// describes. Drops the error resource that the stream error owns.
static failure_t stream_failure(const char *step, wasi_io_streams_stream_error_t *error) {
    if (error->tag == WASI_IO_STREAMS_STREAM_ERROR_CLOSED) {
        return (failure_t){step, "closed"};
    }
    wasi_io_error_own_error_t owned = error->val.last_operation_failed;
    sockets_workload_string_t debug;
    wasi_io_error_method_error_to_debug_string(wasi_io_error_borrow_error(owned), &debug);
    char *text = malloc(debug.len + 1);
    size_t code = 0;
    if (text) {
        memcpy(text, debug.ptr, debug.len);
        text[debug.len] = '\0';
        code = error_code_in(text);
        free(text);
    }
    sockets_workload_string_free(&debug);
    // wit-bindgen-c's *_free helpers never drop handles: the error is ours to drop.
    wasi_io_error_error_drop_own(owned);
    return (failure_t){step, ERROR_CODE_NAMES[code]};
}

// Blocks until `pollable` is ready or the monotonic clock reaches `deadline` (0: no deadline).
// Returns whether the pollable is ready.
static bool wait_until(pollable_t pollable, uint64_t deadline) {
    wasi_io_poll_own_pollable_t timer = {0};
    pollable_t list[2] = {pollable};
    wasi_io_poll_list_borrow_pollable_t in = {.ptr = list, .len = 1};
    if (deadline) {
        timer = wasi_clocks_monotonic_clock_subscribe_instant(deadline);
        list[1] = wasi_io_poll_borrow_pollable(timer);
        in.len = 2;
    }
    sockets_workload_list_u32_t ready;
    wasi_io_poll_poll(&in, &ready);
    bool is_ready = false;
    for (size_t i = 0; i < ready.len; i++) {
        if (ready.ptr[i] == 0) {
            is_ready = true;
        }
    }
    sockets_workload_list_u32_free(&ready);
    if (deadline) {
        wasi_io_poll_pollable_drop_own(timer);
    }
    return is_ready;
}

static void wait_for(pollable_t pollable) {
    wait_until(pollable, 0);
}

static void sleep_ms(unsigned long ms) {
    wasi_io_poll_own_pollable_t timer =
        wasi_clocks_monotonic_clock_subscribe_duration((uint64_t)ms * NS_PER_MS);
    wait_for(wasi_io_poll_borrow_pollable(timer));
    wasi_io_poll_pollable_drop_own(timer);
}

// Parses a decimal number of at most `max`; false if `text` is not one.
static bool parse_number(const char *text, unsigned long max, unsigned long *out) {
    if (!*text) {
        return false;
    }
    unsigned long value = 0;
    for (const char *c = text; *c; c++) {
        if (*c < '0' || *c > '9') {
            return false;
        }
        value = value * 10 + (unsigned long)(*c - '0');
        if (value > max) {
            return false;
        }
    }
    *out = value;
    return true;
}

// Parses a dotted-quad IPv4 literal ("10.96.0.10").
static bool parse_ipv4(const char *text, wasi_sockets_network_ipv4_address_t *out) {
    uint8_t octets[4];
    const char *p = text;
    for (int i = 0; i < 4; i++) {
        const char *end = strchr(p, i < 3 ? '.' : '\0');
        if (!end || end == p || end - p > 3) {
            return false;
        }
        char part[4] = {0};
        memcpy(part, p, (size_t)(end - p));
        unsigned long octet;
        if (!parse_number(part, 255, &octet)) {
            return false;
        }
        octets[i] = (uint8_t)octet;
        p = end + 1;
    }
    *out = (wasi_sockets_network_ipv4_address_t){octets[0], octets[1], octets[2], octets[3]};
    return true;
}

static socket_address_t ipv4_socket_address(wasi_sockets_network_ipv4_address_t ip,
                                            uint16_t port) {
    socket_address_t address = {.tag = WASI_SOCKETS_NETWORK_IP_SOCKET_ADDRESS_IPV4};
    address.val.ipv4.port = port;
    address.val.ipv4.address = ip;
    return address;
}

// Writes "A.B.C.D:PORT" (or "[x:x:x:x:x:x:x:x]:PORT") into `buf`.
static void format_address(char *buf, size_t size, const socket_address_t *address) {
    if (address->tag == WASI_SOCKETS_NETWORK_IP_SOCKET_ADDRESS_IPV4) {
        const wasi_sockets_network_ipv4_socket_address_t *v4 = &address->val.ipv4;
        snprintf(buf, size, "%u.%u.%u.%u:%u", v4->address.f0, v4->address.f1, v4->address.f2,
                 v4->address.f3, v4->port);
    } else {
        const wasi_sockets_network_ipv6_socket_address_t *v6 = &address->val.ipv6;
        snprintf(buf, size, "[%x:%x:%x:%x:%x:%x:%x:%x]:%u", v6->address.f0, v6->address.f1,
                 v6->address.f2, v6->address.f3, v6->address.f4, v6->address.f5, v6->address.f6,
                 v6->address.f7, v6->port);
    }
}

static uint16_t address_port(const socket_address_t *address) {
    return address->tag == WASI_SOCKETS_NETWORK_IP_SOCKET_ADDRESS_IPV4 ? address->val.ipv4.port
                                                                       : address->val.ipv6.port;
}

// The IPv4 address of `host`: the literal itself, or the first IPv4 address that
// wasi:sockets/ip-name-lookup resolves the name to.
static failure_t resolve(wasi_sockets_network_borrow_network_t network, const char *host,
                         wasi_sockets_network_ipv4_address_t *out) {
    if (parse_ipv4(host, out)) {
        return OK;
    }
    sockets_workload_string_t name;
    sockets_workload_string_set(&name, host);
    wasi_sockets_ip_name_lookup_own_resolve_address_stream_t stream;
    error_code_t code;
    if (!wasi_sockets_ip_name_lookup_resolve_addresses(network, &name, &stream, &code)) {
        return fail("resolve", code);
    }
    wasi_sockets_ip_name_lookup_borrow_resolve_address_stream_t borrowed =
        wasi_sockets_ip_name_lookup_borrow_resolve_address_stream(stream);
    wasi_io_poll_own_pollable_t ready =
        wasi_sockets_ip_name_lookup_method_resolve_address_stream_subscribe(borrowed);
    failure_t result = fail("resolve", WASI_SOCKETS_NETWORK_ERROR_CODE_NAME_UNRESOLVABLE);
    for (;;) {
        wasi_sockets_ip_name_lookup_option_ip_address_t next;
        if (!wasi_sockets_ip_name_lookup_method_resolve_address_stream_resolve_next_address(
                borrowed, &next, &code)) {
            if (code == WOULD_BLOCK) {
                wait_for(wasi_io_poll_borrow_pollable(ready));
                continue;
            }
            result = fail("resolve", code);
            break;
        }
        if (!next.is_some) {
            // The end of the addresses, none of them IPv4.
            break;
        }
        if (next.val.tag == WASI_SOCKETS_NETWORK_IP_ADDRESS_IPV4) {
            *out = next.val.val.ipv4;
            result = OK;
            break;
        }
    }
    // The pollable is a child of the stream: drop it first.
    wasi_io_poll_pollable_drop_own(ready);
    wasi_sockets_ip_name_lookup_resolve_address_stream_drop_own(stream);
    return result;
}

// Writes all of `data` to `stream`, WRITE_CHUNK bytes at a time.
static failure_t write_all(wasi_io_streams_borrow_output_stream_t stream, const uint8_t *data,
                           size_t len) {
    for (size_t done = 0; done < len;) {
        size_t n = len - done < WRITE_CHUNK ? len - done : WRITE_CHUNK;
        sockets_workload_list_u8_t chunk = {.ptr = (uint8_t *)data + done, .len = n};
        wasi_io_streams_stream_error_t error;
        if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(stream, &chunk,
                                                                           &error)) {
            return stream_failure("send", &error);
        }
        done += n;
    }
    return OK;
}

// Prints a failure line: "<command> HOST:PORT: <step>: <reason>".
static void report(const char *command, const char *host, const char *port, failure_t f) {
    fprintf(stderr, "%s %s:%s: %s: %s\n", command, host, port, f.step, f.reason);
}

// ---- tcp-echo -------------------------------------------------------------------------------

// Echoes one accepted connection until the peer shuts down its send side.
static failure_t echo_connection(wasi_io_streams_borrow_input_stream_t in,
                                 wasi_io_streams_borrow_output_stream_t out) {
    for (;;) {
        sockets_workload_list_u8_t chunk;
        wasi_io_streams_stream_error_t error;
        if (!wasi_io_streams_method_input_stream_blocking_read(in, READ_CHUNK, &chunk, &error)) {
            if (error.tag == WASI_IO_STREAMS_STREAM_ERROR_CLOSED) {
                return OK;
            }
            return stream_failure("receive", &error);
        }
        failure_t result = write_all(out, chunk.ptr, chunk.len);
        sockets_workload_list_u8_free(&chunk);
        if (failed(result)) {
            return result;
        }
    }
}

// Binds, listens, and serves connections one after another; returns only on a setup failure.
static failure_t tcp_echo(wasi_sockets_network_borrow_network_t network, uint16_t port,
                          const char *port_text) {
    wasi_sockets_tcp_own_tcp_socket_t listener;
    error_code_t code;
    if (!wasi_sockets_tcp_create_socket_create_tcp_socket(
            WASI_SOCKETS_NETWORK_IP_ADDRESS_FAMILY_IPV4, &listener, &code)) {
        return fail("create", code);
    }
    wasi_sockets_tcp_borrow_tcp_socket_t socket = wasi_sockets_tcp_borrow_tcp_socket(listener);
    wasi_io_poll_own_pollable_t ready = wasi_sockets_tcp_method_tcp_socket_subscribe(socket);
    pollable_t ready_borrow = wasi_io_poll_borrow_pollable(ready);
    failure_t result = OK;

    // Binding and listening are start-/finish- pairs: finish says would-block until the
    // socket's pollable is ready.
    socket_address_t any = ipv4_socket_address((wasi_sockets_network_ipv4_address_t){0}, port);
    if (!wasi_sockets_tcp_method_tcp_socket_start_bind(socket, network, &any, &code)) {
        result = fail("bind", code);
        goto done;
    }
    while (!wasi_sockets_tcp_method_tcp_socket_finish_bind(socket, &code)) {
        if (code != WOULD_BLOCK) {
            result = fail("bind", code);
            goto done;
        }
        wait_for(ready_borrow);
    }
    if (!wasi_sockets_tcp_method_tcp_socket_start_listen(socket, &code)) {
        result = fail("listen", code);
        goto done;
    }
    while (!wasi_sockets_tcp_method_tcp_socket_finish_listen(socket, &code)) {
        if (code != WOULD_BLOCK) {
            result = fail("listen", code);
            goto done;
        }
        wait_for(ready_borrow);
    }
    // The port actually bound (PORT itself, or the ephemeral one for PORT 0).
    socket_address_t local;
    if (wasi_sockets_tcp_method_tcp_socket_local_address(socket, &local, &code)) {
        port = address_port(&local);
    }
    printf("listening tcp %u\n", port);
    fflush(stdout);

    for (;;) {
        // accept says would-block while no connection is pending; the listener's pollable
        // is ready when one is.
        wasi_sockets_tcp_tuple3_own_tcp_socket_own_input_stream_own_output_stream_t accepted;
        if (!wasi_sockets_tcp_method_tcp_socket_accept(socket, &accepted, &code)) {
            if (code == WOULD_BLOCK) {
                wait_for(ready_borrow);
            } else {
                report("tcp-echo", "0.0.0.0", port_text, fail("accept", code));
            }
            continue;
        }
        wasi_sockets_tcp_own_tcp_socket_t client = accepted.f0;
        socket_address_t peer;
        char peer_text[64] = "unknown";
        if (wasi_sockets_tcp_method_tcp_socket_remote_address(
                wasi_sockets_tcp_borrow_tcp_socket(client), &peer, &code)) {
            format_address(peer_text, sizeof peer_text, &peer);
        }
        printf("accepted %s\n", peer_text);
        fflush(stdout);
        failure_t echoed = echo_connection(wasi_io_streams_borrow_input_stream(accepted.f1),
                                           wasi_io_streams_borrow_output_stream(accepted.f2));
        if (failed(echoed)) {
            report("tcp-echo", "0.0.0.0", port_text, echoed);
        }
        // The streams are children of the connection's socket: drop them first.
        wasi_io_streams_input_stream_drop_own(accepted.f1);
        wasi_io_streams_output_stream_drop_own(accepted.f2);
        wasi_sockets_tcp_tcp_socket_drop_own(client);
    }

done:
    wasi_io_poll_pollable_drop_own(ready);
    wasi_sockets_tcp_tcp_socket_drop_own(listener);
    return result;
}

// ---- udp ------------------------------------------------------------------------------------

// A bound UDP socket with its (unconnected) datagram streams and their pollables.
typedef struct {
    wasi_sockets_udp_own_udp_socket_t socket;
    wasi_sockets_udp_own_incoming_datagram_stream_t incoming;
    wasi_sockets_udp_own_outgoing_datagram_stream_t outgoing;
    wasi_io_poll_own_pollable_t incoming_ready;
    wasi_io_poll_own_pollable_t outgoing_ready;
} udp_t;

// Creates a UDP socket bound to 0.0.0.0:port (0: an ephemeral port) and its streams, not
// limited to one peer (stream(none): every send names its destination). On failure, nothing
// is left to drop.
static failure_t udp_open(wasi_sockets_network_borrow_network_t network, uint16_t port,
                          udp_t *udp) {
    error_code_t code;
    if (!wasi_sockets_udp_create_socket_create_udp_socket(
            WASI_SOCKETS_NETWORK_IP_ADDRESS_FAMILY_IPV4, &udp->socket, &code)) {
        return fail("create", code);
    }
    wasi_sockets_udp_borrow_udp_socket_t socket = wasi_sockets_udp_borrow_udp_socket(udp->socket);
    failure_t result = OK;
    socket_address_t any = ipv4_socket_address((wasi_sockets_network_ipv4_address_t){0}, port);
    if (!wasi_sockets_udp_method_udp_socket_start_bind(socket, network, &any, &code)) {
        result = fail("bind", code);
    } else {
        wasi_io_poll_own_pollable_t ready = wasi_sockets_udp_method_udp_socket_subscribe(socket);
        while (!wasi_sockets_udp_method_udp_socket_finish_bind(socket, &code)) {
            if (code != WOULD_BLOCK) {
                result = fail("bind", code);
                break;
            }
            wait_for(wasi_io_poll_borrow_pollable(ready));
        }
        wasi_io_poll_pollable_drop_own(ready);
    }
    wasi_sockets_udp_tuple2_own_incoming_datagram_stream_own_outgoing_datagram_stream_t streams;
    if (!failed(result) &&
        !wasi_sockets_udp_method_udp_socket_stream(socket, NULL, &streams, &code)) {
        result = fail("stream", code);
    }
    if (failed(result)) {
        wasi_sockets_udp_udp_socket_drop_own(udp->socket);
        return result;
    }
    udp->incoming = streams.f0;
    udp->outgoing = streams.f1;
    udp->incoming_ready = wasi_sockets_udp_method_incoming_datagram_stream_subscribe(
        wasi_sockets_udp_borrow_incoming_datagram_stream(udp->incoming));
    udp->outgoing_ready = wasi_sockets_udp_method_outgoing_datagram_stream_subscribe(
        wasi_sockets_udp_borrow_outgoing_datagram_stream(udp->outgoing));
    return OK;
}

// Drops a udp_t's resources, children before parents.
static void udp_close(udp_t *udp) {
    wasi_io_poll_pollable_drop_own(udp->incoming_ready);
    wasi_io_poll_pollable_drop_own(udp->outgoing_ready);
    wasi_sockets_udp_incoming_datagram_stream_drop_own(udp->incoming);
    wasi_sockets_udp_outgoing_datagram_stream_drop_own(udp->outgoing);
    wasi_sockets_udp_udp_socket_drop_own(udp->socket);
}

// Sends one datagram to `to`: check-send says how many datagrams the next send may carry (0:
// wait for the stream's pollable), and send reports how many it took (0: wait, try again).
static failure_t udp_send_one(udp_t *udp, const uint8_t *data, size_t len,
                              const socket_address_t *to) {
    wasi_sockets_udp_borrow_outgoing_datagram_stream_t stream =
        wasi_sockets_udp_borrow_outgoing_datagram_stream(udp->outgoing);
    wasi_sockets_udp_outgoing_datagram_t datagram = {
        .data = {.ptr = (uint8_t *)data, .len = len},
        .remote_address = {.is_some = true, .val = *to},
    };
    wasi_sockets_udp_list_outgoing_datagram_t list = {.ptr = &datagram, .len = 1};
    for (;;) {
        uint64_t permitted;
        error_code_t code;
        if (!wasi_sockets_udp_method_outgoing_datagram_stream_check_send(stream, &permitted,
                                                                         &code)) {
            return fail("send", code);
        }
        if (permitted == 0) {
            wait_for(wasi_io_poll_borrow_pollable(udp->outgoing_ready));
            continue;
        }
        uint64_t sent;
        if (!wasi_sockets_udp_method_outgoing_datagram_stream_send(stream, &list, &sent, &code)) {
            return fail("send", code);
        }
        if (sent == 1) {
            return OK;
        }
        wait_for(wasi_io_poll_borrow_pollable(udp->outgoing_ready));
    }
}

// Binds and sends every datagram back to its sender; returns only on a setup failure.
static failure_t udp_echo(wasi_sockets_network_borrow_network_t network, uint16_t port,
                          const char *port_text) {
    udp_t udp;
    failure_t result = udp_open(network, port, &udp);
    if (failed(result)) {
        return result;
    }
    socket_address_t local;
    error_code_t code;
    if (wasi_sockets_udp_method_udp_socket_local_address(
            wasi_sockets_udp_borrow_udp_socket(udp.socket), &local, &code)) {
        port = address_port(&local);
    }
    printf("listening udp %u\n", port);
    fflush(stdout);

    wasi_sockets_udp_borrow_incoming_datagram_stream_t incoming =
        wasi_sockets_udp_borrow_incoming_datagram_stream(udp.incoming);
    for (;;) {
        // receive never blocks: it returns what has arrived, possibly nothing; the stream's
        // pollable is ready when something has.
        wasi_sockets_udp_list_incoming_datagram_t datagrams;
        if (!wasi_sockets_udp_method_incoming_datagram_stream_receive(incoming, MAX_DATAGRAMS,
                                                                      &datagrams, &code)) {
            report("udp-echo", "0.0.0.0", port_text, fail("receive", code));
            wait_for(wasi_io_poll_borrow_pollable(udp.incoming_ready));
            continue;
        }
        if (datagrams.len == 0) {
            wait_for(wasi_io_poll_borrow_pollable(udp.incoming_ready));
        }
        for (size_t i = 0; i < datagrams.len; i++) {
            wasi_sockets_udp_incoming_datagram_t *datagram = &datagrams.ptr[i];
            failure_t sent = udp_send_one(&udp, datagram->data.ptr, datagram->data.len,
                                          &datagram->remote_address);
            if (failed(sent)) {
                report("udp-echo", "0.0.0.0", port_text, sent);
            }
        }
        wasi_sockets_udp_list_incoming_datagram_free(&datagrams);
    }
    // Not reached: serving goes on until the pod is stopped.
}

// ---- tcp-send and udp-send ------------------------------------------------------------------

// One tcp-send exchange: connect, send, shut down the send side, read until the peer closes,
// then print the reply.
static failure_t tcp_send(wasi_sockets_network_borrow_network_t network, const char *host,
                          uint16_t port, const char *message) {
    wasi_sockets_network_ipv4_address_t ip;
    failure_t result = resolve(network, host, &ip);
    if (failed(result)) {
        return result;
    }
    wasi_sockets_tcp_own_tcp_socket_t owned;
    error_code_t code;
    if (!wasi_sockets_tcp_create_socket_create_tcp_socket(
            WASI_SOCKETS_NETWORK_IP_ADDRESS_FAMILY_IPV4, &owned, &code)) {
        return fail("create", code);
    }
    wasi_sockets_tcp_borrow_tcp_socket_t socket = wasi_sockets_tcp_borrow_tcp_socket(owned);
    wasi_io_poll_own_pollable_t ready = wasi_sockets_tcp_method_tcp_socket_subscribe(socket);
    wasi_sockets_tcp_tuple2_own_input_stream_own_output_stream_t streams;
    bool connected = false;
    uint8_t *reply = NULL;
    size_t reply_len = 0;

    // start-connect, then finish-connect says would-block until the socket's pollable is
    // ready (connected, refused, or denied).
    socket_address_t remote = ipv4_socket_address(ip, port);
    if (!wasi_sockets_tcp_method_tcp_socket_start_connect(socket, network, &remote, &code)) {
        result = fail("connect", code);
        goto done;
    }
    while (!wasi_sockets_tcp_method_tcp_socket_finish_connect(socket, &streams, &code)) {
        if (code != WOULD_BLOCK) {
            result = fail("connect", code);
            goto done;
        }
        wait_for(wasi_io_poll_borrow_pollable(ready));
    }
    connected = true;

    result = write_all(wasi_io_streams_borrow_output_stream(streams.f1),
                       (const uint8_t *)message, strlen(message));
    if (failed(result)) {
        goto done;
    }
    if (!wasi_sockets_tcp_method_tcp_socket_shutdown(socket, WASI_SOCKETS_TCP_SHUTDOWN_TYPE_SEND,
                                                     &code)) {
        result = fail("shutdown", code);
        goto done;
    }
    // The reply is everything until the peer closes; it is printed only when complete.
    for (;;) {
        sockets_workload_list_u8_t chunk;
        wasi_io_streams_stream_error_t error;
        if (!wasi_io_streams_method_input_stream_blocking_read(
                wasi_io_streams_borrow_input_stream(streams.f0), READ_CHUNK, &chunk, &error)) {
            if (error.tag != WASI_IO_STREAMS_STREAM_ERROR_CLOSED) {
                result = stream_failure("receive", &error);
            }
            break;
        }
        uint8_t *grown = realloc(reply, reply_len + chunk.len + 1);
        if (!grown) {
            sockets_workload_list_u8_free(&chunk);
            result = fail("receive", WASI_SOCKETS_NETWORK_ERROR_CODE_OUT_OF_MEMORY);
            break;
        }
        reply = grown;
        memcpy(reply + reply_len, chunk.ptr, chunk.len);
        reply_len += chunk.len;
        sockets_workload_list_u8_free(&chunk);
    }
    if (!failed(result)) {
        fwrite(reply, 1, reply_len, stdout);
        fflush(stdout);
    }

done:
    free(reply);
    // The pollable and the streams are children of the socket: drop them first.
    wasi_io_poll_pollable_drop_own(ready);
    if (connected) {
        wasi_io_streams_input_stream_drop_own(streams.f0);
        wasi_io_streams_output_stream_drop_own(streams.f1);
    }
    wasi_sockets_tcp_tcp_socket_drop_own(owned);
    return result;
}

// One udp-send exchange: send one datagram from an ephemeral port, wait for one reply.
static failure_t udp_send(wasi_sockets_network_borrow_network_t network, const char *host,
                          uint16_t port, const char *message) {
    wasi_sockets_network_ipv4_address_t ip;
    failure_t result = resolve(network, host, &ip);
    if (failed(result)) {
        return result;
    }
    udp_t udp;
    result = udp_open(network, 0, &udp);
    if (failed(result)) {
        return result;
    }
    socket_address_t remote = ipv4_socket_address(ip, port);
    result = udp_send_one(&udp, (const uint8_t *)message, strlen(message), &remote);
    uint64_t deadline = wasi_clocks_monotonic_clock_now() + UDP_REPLY_TIMEOUT_NS;
    while (!failed(result)) {
        wasi_sockets_udp_list_incoming_datagram_t datagrams;
        error_code_t code;
        if (!wasi_sockets_udp_method_incoming_datagram_stream_receive(
                wasi_sockets_udp_borrow_incoming_datagram_stream(udp.incoming), 1, &datagrams,
                &code)) {
            result = fail("receive", code);
            break;
        }
        if (datagrams.len > 0) {
            fwrite(datagrams.ptr[0].data.ptr, 1, datagrams.ptr[0].data.len, stdout);
            fflush(stdout);
            wasi_sockets_udp_list_incoming_datagram_free(&datagrams);
            break;
        }
        if (!wait_until(wasi_io_poll_borrow_pollable(udp.incoming_ready), deadline)) {
            result = (failure_t){"receive", "timeout"};
        }
    }
    udp_close(&udp);
    return result;
}

// ---- main -----------------------------------------------------------------------------------

static int usage(void) {
    fputs("usage: sockets tcp-echo PORT\n"
          "       sockets udp-echo PORT\n"
          "       sockets tcp-send HOST PORT MESSAGE [--repeat N] [--interval-ms M]\n"
          "       sockets udp-send HOST PORT MESSAGE [--repeat N] [--interval-ms M]\n",
          stderr);
    return EXIT_USAGE;
}

// Runs the subcommand; returns the exit status.
static int run(int argc, char **argv) {
    if (argc < 2) {
        return usage();
    }
    const char *command = argv[1];
    bool echo = strcmp(command, "tcp-echo") == 0 || strcmp(command, "udp-echo") == 0;
    bool send = strcmp(command, "tcp-send") == 0 || strcmp(command, "udp-send") == 0;
    bool tcp = strncmp(command, "tcp-", 4) == 0;
    unsigned long port;
    if (echo) {
        if (argc != 3 || !parse_number(argv[2], 65535, &port)) {
            return usage();
        }
    } else if (send) {
        if (argc < 5 || !parse_number(argv[3], 65535, &port) || port == 0) {
            return usage();
        }
    } else {
        return usage();
    }
    unsigned long repeat = 1;
    unsigned long interval_ms = DEFAULT_INTERVAL_MS;
    for (int i = 5; send && i < argc; i += 2) {
        unsigned long *option = strcmp(argv[i], "--repeat") == 0        ? &repeat
                                : strcmp(argv[i], "--interval-ms") == 0 ? &interval_ms
                                                                        : NULL;
        if (!option || i + 1 >= argc || !parse_number(argv[i + 1], 100000000ul, option)) {
            return usage();
        }
    }
    if (repeat == 0) {
        return usage();
    }

    wasi_sockets_network_own_network_t network = wasi_sockets_instance_network_instance_network();
    wasi_sockets_network_borrow_network_t borrowed = wasi_sockets_network_borrow_network(network);
    int status = 0;
    if (echo) {
        const char *port_text = argv[2];
        failure_t f = tcp ? tcp_echo(borrowed, (uint16_t)port, port_text)
                          : udp_echo(borrowed, (uint16_t)port, port_text);
        report(command, "0.0.0.0", port_text, f);
        status = EXIT_FAILED;
    } else {
        const char *host = argv[2];
        const char *message = argv[4];
        for (unsigned long attempt = 0; attempt < repeat; attempt++) {
            if (attempt > 0) {
                sleep_ms(interval_ms);
            }
            failure_t f = tcp ? tcp_send(borrowed, host, (uint16_t)port, message)
                              : udp_send(borrowed, host, (uint16_t)port, message);
            status = failed(f) ? EXIT_FAILED : 0;
            if (failed(f)) {
                report(command, host, argv[3], f);
            }
        }
    }
    wasi_sockets_network_network_drop_own(network);
    return status;
}

int main(int argc, char **argv) {
    int status = run(argc, argv);
    if (status != 0) {
        // The command adapter turns every non-zero proc_exit into a plain failure (1, through
        // wasi:cli/exit.exit); exit-with-code reports the status itself. It does not return,
        // and wasi-libc's stdio is not flushed on the way out: flush it first.
        fflush(stdout);
        fflush(stderr);
        wasi_cli_exit_exit_with_code((uint8_t)status);
    }
    return status;
}
