/* wsclient.c - see wsclient.h. */
#include "wsclient.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "testutil.h"

/* Exactly n bytes into out within the deadline. */
static int read_exact(ws_client *c, void *out, size_t n, int64_t deadline)
{
    char *o = out;
    for (size_t got = 0; got < n;) {
        int64_t left = deadline - test_now_ms();
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            return -1;
        ssize_t r = recv(c->fd, o + got, n - got, 0);
        if (r <= 0) {
            c->broken = true;
            return -1;
        }
        got += (size_t)r;
    }
    return 0;
}

int ws_connect_start(ws_client *c, int port, const char *path, const char *subprotocol,
                     const char *extra_headers)
{
    memset(c, 0, sizeof *c);
    c->fd = test_connect(port);
    if (c->fd < 0)
        return -1;
    unsigned char nonce[16];
    char key[32];
    RAND_bytes(nonce, sizeof nonce);
    EVP_EncodeBlock((unsigned char *)key, nonce, sizeof nonce);
    char req[4096];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n%s%s%s%s\r\n",
                     path, port, key, subprotocol ? "Sec-WebSocket-Protocol: " : "",
                     subprotocol ? subprotocol : "", subprotocol ? "\r\n" : "",
                     extra_headers ? extra_headers : "");
    if (test_send_all(c->fd, req, (size_t)n) != 0) {
        ws_close(c);
        return -1;
    }
    return 0;
}

int ws_connect_finish(ws_client *c)
{
    /* The answer's header block, byte by byte up to the blank line (it is small). */
    char head[4096];
    size_t h = 0;
    int64_t deadline = test_now_ms() + 5000;
    while (h < sizeof head - 1 && !(h >= 4 && memcmp(head + h - 4, "\r\n\r\n", 4) == 0))
        if (read_exact(c, head + h++, 1, deadline) != 0) {
            ws_close(c);
            return -1;
        }
    head[h] = '\0';
    int status = 0;
    sscanf(head, "HTTP/1.1 %d", &status);
    if (status != 101)
        ws_close(c);
    return status;
}

int ws_connect(ws_client *c, int port, const char *path, const char *subprotocol,
               const char *extra_headers)
{
    if (ws_connect_start(c, port, path, subprotocol, extra_headers) != 0)
        return -1;
    return ws_connect_finish(c);
}

int ws_send(ws_client *c, int opcode, const void *data, size_t len)
{
    unsigned char hdr[14];
    size_t h = 0;
    hdr[h++] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        hdr[h++] = (unsigned char)(0x80 | len);
    } else if (len < 65536) {
        hdr[h++] = 0x80 | 126;
        hdr[h++] = (unsigned char)(len >> 8);
        hdr[h++] = (unsigned char)len;
    } else {
        hdr[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            hdr[h++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    unsigned char mask[4];
    RAND_bytes(mask, 4);
    memcpy(hdr + h, mask, 4);
    h += 4;
    unsigned char *body = malloc(len ? len : 1);
    for (size_t i = 0; i < len; i++)
        body[i] = ((const unsigned char *)data)[i] ^ mask[i % 4];
    int rc = test_send_all(c->fd, hdr, h) == 0 && test_send_all(c->fd, body, len) == 0 ? 0 : -1;
    free(body);
    return rc;
}

int ws_send_text(ws_client *c, const char *text)
{
    return ws_send(c, 1, text, strlen(text));
}

/* One frame as it is on the wire. The deadline only bounds the wait for its first byte:
 * once a frame has begun it is read whole (within 10 s more), so a short timeout never
 * leaves the stream cut in the middle of a frame. */
static int read_frame(ws_client *c, ws_frame *f, int64_t deadline)
{
    unsigned char b[2];
    if (read_exact(c, b, 1, deadline) != 0)
        return -1;
    deadline = test_now_ms() + 10000;
    if (read_exact(c, b + 1, 1, deadline) != 0)
        return -1;
    f->opcode = b[0] & 0x0f;
    uint64_t len = b[1] & 0x7f;
    if (len == 126 || len == 127) {
        unsigned char ext[8];
        size_t n = len == 126 ? 2 : 8;
        if (read_exact(c, ext, n, deadline) != 0)
            return -1;
        len = 0;
        for (size_t i = 0; i < n; i++)
            len = len << 8 | ext[i];
    }
    if (len > 64u * 1024 * 1024)
        return -1;
    f->data = malloc(len + 1);
    if (read_exact(c, f->data, len, deadline) != 0)
        return -1;
    f->data[len] = '\0';
    f->len = len;
    if (f->opcode == 8)
        f->close_code = len >= 2 ? ((unsigned char)f->data[0] << 8 | (unsigned char)f->data[1])
                                 : 1005;
    return 0;
}

int ws_recv(ws_client *c, ws_frame *f, int timeout_ms)
{
    int64_t deadline = test_now_ms() + timeout_ms;
    for (;;) {
        memset(f, 0, sizeof *f);
        if (c->fd < 0 || read_frame(c, f, deadline) != 0) {
            ws_frame_free(f);
            f->opcode = 0;
            return -1;
        }
        if (f->opcode != 9)
            return 0;
        ws_send(c, 10, f->data, f->len); /* pong, then keep reading */
        ws_frame_free(f);
    }
}

void ws_frame_free(ws_frame *f)
{
    free(f->data);
    f->data = NULL;
}

void ws_close(ws_client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}
