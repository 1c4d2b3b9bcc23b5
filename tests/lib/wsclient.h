/* wsclient.h - a blocking WebSocket client for the tests (RFC 6455 over a raw socket).
 *
 * Deliberately independent of libwebsockets, so the server is tested against a second
 * implementation of the protocol: the handshake, masked client frames, server frames
 * read one at a time with a timeout, close codes. */
#ifndef CHORUS_WSCLIENT_H
#define CHORUS_WSCLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ws_client {
    int fd;
    bool broken;       /* the peer closed the connection, or it failed */
} ws_client;

typedef struct ws_frame {
    int opcode;        /* 1 text, 2 binary, 8 close, 9 ping, 10 pong */
    char *data;        /* payload, NUL-terminated (heap; ws_frame_free) */
    size_t len;
    int close_code;    /* for a close frame: its code, or 1005 when it had none */
} ws_frame;

/* Opens ws://127.0.0.1:port<path> offering subprotocol (NULL: none) with extra header
 * lines ("Name: value\r\n", may be NULL). Returns the HTTP status of the answer (101
 * when upgraded; then c is open), or -1 when the server could not be reached. */
int ws_connect(ws_client *c, int port, const char *path, const char *subprotocol,
               const char *extra_headers);

/* ws_connect in two halves, so a test can have many upgrades reach the server at once:
 * _start sends the request (0, or -1 when the server could not be reached), _finish
 * reads the answer and returns what ws_connect does. */
int ws_connect_start(ws_client *c, int port, const char *path, const char *subprotocol,
                     const char *extra_headers);
int ws_connect_finish(ws_client *c);

/* Sends one frame (masked, FIN set). Returns 0 or -1. */
int ws_send(ws_client *c, int opcode, const void *data, size_t len);
int ws_send_text(ws_client *c, const char *text);

/* Reads the next frame if it begins within timeout_ms (a frame that has begun is read
 * whole), answering pings on the way. Returns 0, or -1 on timeout or a closed/broken
 * connection (f->opcode is then 0). */
int ws_recv(ws_client *c, ws_frame *f, int timeout_ms);
void ws_frame_free(ws_frame *f);

void ws_close(ws_client *c);

#endif
