/* The secondary's steady state in C: a relay link's bytes in, journals on the SVOLs.
 *
 * docs/benchmarks.md, "What the goals need: a native steady-state loop per
 * site", is the design; host/native/restore.py the adapter that decides when
 * this runs.  A Receiver reads the link's socket (after Python made the TLS
 * session and checked the peer: it then reads through that session's SSL),
 * parses frames, checks every journal of a JNLWR the way
 * RestoreStream.verify_journal does, stages those that continue the stream
 * and writes them to the SVOLs when the restorer says how far it may go.
 *
 * Anything it does not handle stops it *before* the frame concerned, which
 * is handed to the Python path whole: another frame type, a journal that
 * fails a check or does not continue the stream (a replay, a gap), a MARK
 * journal (it changes the pair state), a range outside its SVOL.  Bytes that are no good
 * frame go to Python's FrameParser, which names the error.  So every refusal
 * and every log line is still the Python code's.
 *
 * The wire layout is not restated here: configure() takes it from
 * host/wire/protocol.py (the one definition, which the gateware reads too).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ---- the layout, from protocol.py ------------------------------------------ */

typedef struct { int off, size; } field;

static struct {
    int ready;
    uint32_t magic;
    int version, header, trailer, control, t_jnlwr, ccrc_span;
    uint32_t flags_ok;
    int64_t max_len[256];            /* -1: no such frame type */
    char kind_data[256];             /* a kind the loop restores (data follows) */
    char kind_zero[256];             /* ... or writes zeros for (ZERO, TRIM: no data) */
    field seq, time, address, length, data_len, data_crc, epoch, idx, kind, group, tag, ccrc;
} L;

static uint64_t rd(const uint8_t *p, field f) {   /* little-endian, 1..8 bytes */
    uint64_t v = 0;
    for (int i = f.size - 1; i >= 0; i--) v = (v << 8) | p[f.off + i];
    return v;
}

static uint32_t rd32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

/* ---- CRC32C: the SSE4.2 instruction when the CPU has it ---------------------- */

static uint32_t crc_table[256];
static int crc_hw;

__attribute__((target("sse4.2")))
static uint32_t crc_sse(uint32_t c, const uint8_t *p, size_t n) {
    while (n && ((uintptr_t)p & 7)) { c = __builtin_ia32_crc32qi(c, *p++); n--; }
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = (uint32_t)__builtin_ia32_crc32di(c, w);
    }
    while (n--) c = __builtin_ia32_crc32qi(c, *p++);
    return c;
}

/* crc32c(data, crc) of the crc32c package: continue from a finished CRC. */
static uint32_t crc32c(const void *buf, size_t n, uint32_t crc) {
    const uint8_t *p = buf;
    uint32_t c = ~crc;
    if (crc_hw) return ~crc_sse(c, p, n);
    while (n--) c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
    __builtin_cpu_init();
    crc_hw = __builtin_cpu_supports("sse4.2");
}

/* ---- staged journals ----------------------------------------------------------- */

typedef struct {
    uint64_t seq, time, address;
    uint32_t tag, len;              /* len: of the data, or of the zeros (data NULL) */
    int vol;                        /* index into Receiver.vols */
    const uint8_t *data;            /* NULL: a ZERO or TRIM journal */
} journal;

typedef struct block {              /* one JNLWR's journals, its body copied in */
    struct block *next;
    size_t bytes;
    int n, done;
    journal j[];
} block;

typedef struct { long idx; int fd; uint64_t size, bs; } svol;

/* What pump() stopped at (host/native/restore.py reads these names). */
enum { NEED = 0, FRAME = 1, BAD = 2, FULL = 3, EOF_ = 4, TLS_ERR = 5 };

typedef struct {
    PyObject_HEAD
    int fd;
    SSL *ssl;
    PyObject *sslobj;               /* keeps the SSL alive */
    long group, epoch;
    uint64_t expect;                /* the SEQ# the next staged journal must have */
    int fast;                       /* stage JNLWRs here (else every frame goes to Python) */
    svol *vols;
    int nvols;
    uint8_t *pt;                    /* plaintext received, not yet taken */
    size_t pos, len, cap;
    uint8_t *rbuf;                  /* ciphertext from the socket */
    block *head, *tail;
    uint64_t staged_bytes, stage_limit, staged, received;
    double last_rx;
    int eof;
    char err[160];
} Receiver;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

#define RBUF (256 << 10)

static void drop_staged(Receiver *r) {
    while (r->head) {
        block *b = r->head;
        r->head = b->next;
        PyMem_RawFree(b);
    }
    r->tail = NULL;
    r->staged_bytes = r->staged = 0;
}

static int grow(Receiver *r, size_t need) {
    if (r->pos) {                   /* what was taken goes first */
        memmove(r->pt, r->pt + r->pos, r->len - r->pos);
        r->len -= r->pos;
        r->pos = 0;
    }
    if (need <= r->cap) return 0;
    uint8_t *p = PyMem_RawRealloc(r->pt, need);
    if (!p) return -1;
    r->pt = p;
    r->cap = need;
    return 0;
}

/* Check every journal of a JNLWR body; 1 if all may be staged here. */
static int stageable(Receiver *r, const uint8_t *body, size_t n, int *count) {
    size_t p = 0;
    uint64_t want = r->expect;
    int k = 0;
    while (p < n) {
        if (n - p < (size_t)L.control) return 0;
        const uint8_t *c = body + p;
        uint64_t dlen = rd(c, L.data_len);
        if (dlen > n - p - L.control) return 0;
        if (rd(c, L.ccrc) != crc32c(c, L.ccrc_span, 0)) return 0;
        int kind = (int)rd(c, L.kind);
        uint64_t span = rd(c, L.length);       /* the SVOL bytes it covers */
        if (L.kind_data[kind]) {
            if (dlen != span) return 0;
        } else if (L.kind_zero[kind]) {
            if (dlen != 0) return 0;
        } else {
            return 0;                   /* MARK (pair states), unknown kinds: Python */
        }
        if (rd(c, L.data_crc) != (dlen ? crc32c(c + L.control, dlen, 0) : 0)) return 0;
        if ((long)rd(c, L.group) != r->group || (long)rd(c, L.epoch) != r->epoch) return 0;
        if (rd(c, L.seq) != want) return 0;
        long idx = (long)rd(c, L.idx);
        uint64_t addr = rd(c, L.address);
        int v = -1;
        for (int i = 0; i < r->nvols; i++)
            if (r->vols[i].idx == idx) v = i;
        if (v < 0 || addr > r->vols[v].size || span > r->vols[v].size - addr
            || addr % r->vols[v].bs || span % r->vols[v].bs || span > UINT32_MAX)
            return 0;
        want++;
        k++;
        p += L.control + dlen;
    }
    *count = k;
    return k > 0;
}

static int stage(Receiver *r, const uint8_t *body, size_t n, int count) {
    block *b = PyMem_RawMalloc(sizeof(block) + count * sizeof(journal) + n);
    if (!b) return -1;
    uint8_t *copy = (uint8_t *)&b->j[count];
    memcpy(copy, body, n);
    b->next = NULL;
    b->bytes = n;
    b->n = count;
    b->done = 0;
    size_t p = 0;
    for (int k = 0; k < count; k++) {
        const uint8_t *c = copy + p;
        journal *j = &b->j[k];
        j->seq = rd(c, L.seq);
        j->time = rd(c, L.time);
        j->address = rd(c, L.address);
        j->tag = (uint32_t)rd(c, L.tag);
        uint32_t dlen = (uint32_t)rd(c, L.data_len);
        j->len = L.kind_data[rd(c, L.kind)] ? dlen : (uint32_t)rd(c, L.length);
        j->data = L.kind_data[rd(c, L.kind)] ? c + L.control : NULL;
        j->vol = 0;
        for (int i = 0; i < r->nvols; i++)
            if (r->vols[i].idx == (long)rd(c, L.idx)) j->vol = i;
        p += L.control + dlen;
    }
    if (r->tail) r->tail->next = b; else r->head = b;
    r->tail = b;
    r->staged_bytes += n;
    r->staged += count;
    r->received += count;
    r->expect += count;
    return 0;
}

/* Frames in the plaintext buffer: stage what may be, stop at the rest. */
static int parse(Receiver *r) {
    while (r->len - r->pos >= (size_t)L.header) {
        const uint8_t *h = r->pt + r->pos;
        uint32_t length = rd32(h + 8);
        int type = h[5];
        if (rd32(h) != L.magic || rd32(h + 12) != crc32c(h, 12, 0) || h[4] != L.version
            || ((h[6] | h[7] << 8) & ~L.flags_ok) || L.max_len[type] < 0
            || length > L.max_len[type])
            return BAD;
        size_t total = L.header + length + (length ? L.trailer : 0);
        if (r->len - r->pos < total) {
            if (total > r->cap && grow(r, total) < 0) { PyErr_NoMemory(); return -1; }
            return NEED;
        }
        const uint8_t *body = h + L.header;
        if (length && rd32(body + length) != crc32c(body, length, 0)) return BAD;
        if (!r->fast || type != L.t_jnlwr) return FRAME;
        int count;
        if (!stageable(r, body, length, &count)) return FRAME;
        if (r->staged && r->staged_bytes + length > r->stage_limit) return FULL;
        if (stage(r, body, length, count) < 0) { PyErr_NoMemory(); return -1; }
        r->pos += total;
    }
    return NEED;
}

/* Decrypt what OpenSSL holds into the plaintext buffer: >0 bytes, 0 none, -1 EOF/error. */
static int decrypt(Receiver *r) {
    int got = 0;
    for (;;) {
        if (r->cap - r->len < 16384 && grow(r, r->len - r->pos + 65536) < 0) return -2;
        int n = SSL_read(r->ssl, r->pt + r->len, (int)(r->cap - r->len));
        if (n > 0) { r->len += n; got += n; continue; }
        int e = SSL_get_error(r->ssl, n);
        if (e == SSL_ERROR_WANT_READ) return got;
        if (got) return got;        /* report the error on the next call */
        if (e == SSL_ERROR_ZERO_RETURN) { r->eof = 1; return -1; }
        snprintf(r->err, sizeof r->err, "TLS error %d reading the link", e);
        return -3;
    }
}

/* ---- the Python type --------------------------------------------------------------- */

static void Receiver_dealloc(Receiver *r) {
    drop_staged(r);
    PyMem_RawFree(r->pt);
    PyMem_RawFree(r->rbuf);
    PyMem_RawFree(r->vols);
    Py_XDECREF(r->sslobj);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

/* CPython 3.11's _ssl._SSLSocket starts with the object header, the
 * socket's weak reference, then the SSL (Modules/_ssl.c, PySSLSocket). */
typedef struct { PyObject_HEAD PyObject *socket; SSL *ssl; } ssl_head;

static SSL *ssl_of(PyObject *obj, unsigned long pyver) {
    if (strcmp(Py_TYPE(obj)->tp_name, "_ssl._SSLSocket") != 0) {
        PyErr_Format(PyExc_TypeError, "not an _ssl._SSLSocket: %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (pyver != OpenSSL_version_num()) {
        PyErr_Format(PyExc_RuntimeError, "Python's ssl runs OpenSSL %lx, this module %lx",
                     pyver, OpenSSL_version_num());
        return NULL;
    }
    SSL *ssl = ((ssl_head *)obj)->ssl;
    /* CPython sets the object as the SSL's app data: that it reads back
     * proves the pointer is this connection's SSL. */
    if (!ssl || SSL_get_app_data(ssl) != (void *)obj) {
        PyErr_SetString(PyExc_RuntimeError, "the TLS session of this Python cannot be handed over");
        return NULL;
    }
    BIO *in = SSL_get_rbio(ssl);
    if (!in || BIO_method_type(in) != BIO_TYPE_MEM) {
        PyErr_SetString(PyExc_RuntimeError, "the TLS session does not read from a memory BIO");
        return NULL;
    }
    return ssl;
}

static int Receiver_init(Receiver *r, PyObject *args, PyObject *kw) {
    static char *names[] = {"fd", "sslobj", "openssl", "group", "epoch", "expect", "volumes",
                            "stage_limit", NULL};
    int fd;
    PyObject *sslobj, *vols;
    unsigned long ver;
    unsigned long long expect, limit;
    if (!L.ready) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iOkllKOK", names, &fd, &sslobj, &ver, &r->group,
                                     &r->epoch, &expect, &vols, &limit))
        return -1;
    if (sslobj != Py_None) {
        if (!(r->ssl = ssl_of(sslobj, ver))) return -1;
        Py_INCREF(sslobj);
        r->sslobj = sslobj;
    }
    PyObject *seq = PySequence_Fast(vols, "volumes: a sequence of (idx, fd, size, block_size)");
    if (!seq) return -1;
    r->nvols = (int)PySequence_Fast_GET_SIZE(seq);
    r->vols = PyMem_RawCalloc(r->nvols ? r->nvols : 1, sizeof(svol));
    for (int i = 0; i < r->nvols; i++) {
        svol *v = &r->vols[i];
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "liKK", &v->idx, &v->fd,
                              &v->size, &v->bs) || !v->bs) {
            Py_DECREF(seq);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "block_size 0");
            return -1;
        }
    }
    Py_DECREF(seq);
    r->fd = fd;
    r->expect = expect;
    r->stage_limit = limit;
    r->fast = 1;
    r->cap = 1 << 20;
    r->pt = PyMem_RawMalloc(r->cap);
    r->rbuf = PyMem_RawMalloc(RBUF);
    r->last_rx = now();
    if (!r->pt || !r->rbuf) { PyErr_NoMemory(); return -1; }
    return 0;
}

/* Read what the socket has, stage what may be; the reason it stopped. */
static PyObject *Receiver_pump(Receiver *r, PyObject *unused) {
    size_t budget = 8 << 20;        /* then back to the event loop */
    for (;;) {
        int s = parse(r);
        if (s < 0) return NULL;
        if (s != NEED) return PyLong_FromLong(s);
        if (r->ssl) {
            int got = decrypt(r);
            if (got == -2) return PyErr_NoMemory();
            if (got == -3) return PyLong_FromLong(TLS_ERR);
            if (got > 0) continue;
        }
        if (r->eof) return PyLong_FromLong(EOF_);
        if (!budget) return PyLong_FromLong(NEED);
        ssize_t n;
        Py_BEGIN_ALLOW_THREADS
        n = recv(r->fd, r->rbuf, RBUF, 0);
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return PyLong_FromLong(NEED);
            if (errno == EINTR) continue;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (n == 0) {
            r->eof = 1;
            continue;               /* what OpenSSL still holds first */
        }
        r->last_rx = now();
        budget = (size_t)n > budget ? 0 : budget - n;
        if (r->ssl) {
            if (BIO_write(SSL_get_rbio(r->ssl), r->rbuf, (int)n) != n) return PyErr_NoMemory();
        } else {
            if (r->cap - r->len < (size_t)n && grow(r, r->len - r->pos + n + 65536) < 0)
                return PyErr_NoMemory();
            memcpy(r->pt + r->len, r->rbuf, n);
            r->len += n;
        }
    }
}

/* Plaintext that came before the loop took the socket (asyncio's buffers). */
static PyObject *Receiver_feed(Receiver *r, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    if (r->cap - r->len < (size_t)b.len && grow(r, r->len - r->pos + b.len + 65536) < 0) {
        PyBuffer_Release(&b);
        return PyErr_NoMemory();
    }
    memcpy(r->pt + r->len, b.buf, b.len);
    r->len += b.len;
    PyBuffer_Release(&b);
    Py_RETURN_NONE;
}

/* The frame pump() stopped at: (type, flags, body), taken out. */
static PyObject *Receiver_take_frame(Receiver *r, PyObject *unused) {
    const uint8_t *h = r->pt + r->pos;
    if (r->len - r->pos < (size_t)L.header) Py_RETURN_NONE;
    uint32_t length = rd32(h + 8);
    size_t total = L.header + length + (length ? L.trailer : 0);
    if (r->len - r->pos < total) Py_RETURN_NONE;
    PyObject *out = Py_BuildValue("(iiy#)", h[5], h[6] | h[7] << 8, h + L.header,
                                  (Py_ssize_t)length);
    if (out) r->pos += total;
    return out;
}

/* Every plaintext byte not yet taken (for Python's parser, or a handback). */
static PyObject *Receiver_take_rest(Receiver *r, PyObject *unused) {
    PyObject *out = PyBytes_FromStringAndSize((char *)r->pt + r->pos, r->len - r->pos);
    if (out) r->pos = r->len = 0;
    return out;
}

static int write_run(Receiver *r, PyObject *writer, svol *v, struct iovec *iov, int n,
                     uint64_t off) {
    while (n) {
        ssize_t w;
        if (writer == Py_None) {
            Py_BEGIN_ALLOW_THREADS
            w = pwritev(v->fd, iov, n, (off_t)off);
            Py_END_ALLOW_THREADS
            if (w < 0) {
                if (errno == EINTR) continue;
                return errno;
            }
        } else {                    /* a fileio backend of the tests: copies, so it may keep them */
            PyObject *bufs = PyList_New(n);
            if (!bufs) return -1;
            for (int i = 0; i < n; i++) {
                PyObject *b = PyBytes_FromStringAndSize(iov[i].iov_base, iov[i].iov_len);
                if (!b) { Py_DECREF(bufs); return -1; }
                PyList_SET_ITEM(bufs, i, b);
            }
            PyObject *res = PyObject_CallFunction(writer, "iOK", v->fd, bufs,
                                                  (unsigned long long)off);
            Py_DECREF(bufs);
            if (!res) {
                if (!PyErr_ExceptionMatches(PyExc_OSError)) return -1;
                PyObject *t, *val, *tb;
                PyErr_Fetch(&t, &val, &tb);
                PyObject *no = val ? PyObject_GetAttrString(val, "errno") : NULL;
                int e = no && PyLong_Check(no) ? (int)PyLong_AsLong(no) : EIO;
                Py_XDECREF(no); Py_XDECREF(t); Py_XDECREF(val); Py_XDECREF(tb);
                PyErr_Clear();
                return e ? e : EIO;
            }
            w = PyLong_AsSsize_t(res);
            Py_DECREF(res);
            if (w < 0) return -1;
        }
        if (w == 0) return EIO;
        off += w;
        while (n && (size_t)w >= iov->iov_len) { w -= iov->iov_len; iov++; n--; }
        if (n) { iov->iov_base = (char *)iov->iov_base + w; iov->iov_len -= w; }
    }
    return 0;
}

/* A ZERO or TRIM journal: zeros over its range (a trimmed range reads back
 * as zeros, as Volume.trim does), in pwritev calls of one zero buffer. */
static const uint8_t zeros[64 << 10];

static int write_zeros(Receiver *r, PyObject *writer, svol *v, uint64_t off, uint64_t len) {
    struct iovec iov[64];
    while (len) {
        int n = 0;
        uint64_t chunk = 0;
        while (n < 64 && chunk < len) {
            size_t k = len - chunk < sizeof zeros ? len - chunk : sizeof zeros;
            iov[n].iov_base = (void *)zeros;
            iov[n].iov_len = k;
            chunk += k;
            n++;
        }
        int err = write_run(r, writer, v, iov, n, off);
        if (err) return err;
        off += chunk;
        len -= chunk;
    }
    return 0;
}

#define RUN_BYTES (256 << 10)       /* as host/secondary/site.py's _RUN_BYTES, _RUN_MAX */
#define RUN_MAX 512

/* Write the staged journals up to SEQ# upto to their SVOLs, in order;
 * adjacent ones as one pwritev.  Returns (applied, time, tag, touched idx,
 * error): error None, or (SEQ# of the first journal not applied, errno). */
static PyObject *Receiver_apply(Receiver *r, PyObject *args) {
    unsigned long long upto;
    PyObject *writer = Py_None;
    if (!PyArg_ParseTuple(args, "K|O", &upto, &writer)) return NULL;
    struct iovec iov[RUN_MAX];
    int n = 0, vol = -1, err = 0;
    uint64_t run_off = 0, run_end = 0, run_first = 0, run_tag = 0;
    uint64_t applied = 0, when = 0, tag = 0;
    uint64_t touched = 0;           /* bit per entry of vols (the first 64) */
    journal *last = NULL;
    /* a run counts as applied (SEQ#, TIME, TAG, SVOL touched) once written */
#define COMMIT() do { applied = last->seq; when = last->time; if (run_tag) tag = run_tag; \
                      touched |= 1ull << (vol & 63); } while (0)
    for (block *b = r->head; b; b = b->next) {
        for (; b->done < b->n; b->done++) {
            journal *j = &b->j[b->done];
            if (j->seq > upto) goto flush;
            if (!j->data) {             /* ZERO or TRIM: the run before it, then zeros */
                if (n) {
                    if ((err = write_run(r, writer, &r->vols[vol], iov, n, run_off))) goto done;
                    COMMIT();
                    n = 0;
                }
                vol = j->vol;
                run_first = j->seq;
                run_tag = j->tag;
                last = j;
                if ((err = write_zeros(r, writer, &r->vols[vol], j->address, j->len))) goto done;
                COMMIT();
                continue;
            }
            if (n && (j->vol != vol || j->address != run_end || run_end - run_off >= RUN_BYTES
                      || n == RUN_MAX)) {
                if ((err = write_run(r, writer, &r->vols[vol], iov, n, run_off))) goto done;
                COMMIT();
                n = 0;
            }
            if (!n) { vol = j->vol; run_off = j->address; run_first = j->seq; run_tag = 0; }
            iov[n].iov_base = (void *)j->data;
            iov[n].iov_len = j->len;
            n++;
            run_end = j->address + j->len;
            if (j->tag) run_tag = j->tag;
            last = j;
        }
    }
flush:
    if (n && !(err = write_run(r, writer, &r->vols[vol], iov, n, run_off))) COMMIT();
#undef COMMIT
done:
    if (err < 0) return NULL;
    /* free what was written; after a failed run the group suspends and the
     * link closes, so what it held is dropped with the rest */
    while (r->head && r->head->done == r->head->n) {
        block *b = r->head;
        r->head = b->next;
        r->staged_bytes -= b->bytes;
        PyMem_RawFree(b);
    }
    if (!r->head) r->tail = NULL;
    uint64_t left = 0;
    for (block *b = r->head; b; b = b->next) left += b->n - b->done;
    r->staged = left;
    PyObject *idx = PyList_New(0);
    for (int i = 0; i < r->nvols && i < 64; i++)
        if (touched >> i & 1) {
            PyObject *x = PyLong_FromLong(r->vols[i].idx);
            PyList_Append(idx, x);
            Py_DECREF(x);
        }
    PyObject *e = err ? Py_BuildValue("(Ki)", (unsigned long long)run_first, err) : Py_NewRef(Py_None);
    return Py_BuildValue("(KKKNN)", (unsigned long long)applied, (unsigned long long)when,
                         (unsigned long long)tag, idx, e);
}

static PyObject *Receiver_drop(Receiver *r, PyObject *unused) {
    drop_staged(r);
    Py_RETURN_NONE;
}

static PyObject *get_u64(Receiver *r, void *which) {
    switch ((intptr_t)which) {
    case 0: return PyLong_FromUnsignedLongLong(r->expect - 1);
    case 1: return PyLong_FromUnsignedLongLong(r->staged);
    case 2: return PyLong_FromUnsignedLongLong(r->staged_bytes);
    case 3: return PyLong_FromUnsignedLongLong(r->received);
    case 4: return PyFloat_FromDouble(r->last_rx);
    case 5: return PyUnicode_FromString(r->err);
    case 6: return PyBool_FromLong(r->fast);
    }
    Py_RETURN_NONE;
}

static int set_fast(Receiver *r, PyObject *v, void *unused) {
    int on = PyObject_IsTrue(v);
    if (on < 0) return -1;
    r->fast = on;
    return 0;
}

static int set_expect(Receiver *r, PyObject *v, void *unused) {
    unsigned long long e = PyLong_AsUnsignedLongLong(v);
    if (PyErr_Occurred()) return -1;
    if (r->head) {
        PyErr_SetString(PyExc_ValueError, "journals are staged: drop() them first");
        return -1;
    }
    r->expect = e + 1;
    return 0;
}

static PyGetSetDef Receiver_getset[] = {
    {"staged_end", (getter)get_u64, (setter)set_expect, "last SEQ# staged (or the one before the next)", (void *)0},
    {"staged", (getter)get_u64, NULL, "journals staged, not yet applied", (void *)1},
    {"staged_bytes", (getter)get_u64, NULL, "bytes staged", (void *)2},
    {"received", (getter)get_u64, NULL, "journals staged since the start", (void *)3},
    {"last_rx", (getter)get_u64, NULL, "CLOCK_MONOTONIC of the last bytes read", (void *)4},
    {"error", (getter)get_u64, NULL, "what a TLS_ERR was", (void *)5},
    {"fast", (getter)get_u64, (setter)set_fast, "stage JNLWRs here", (void *)6},
    {NULL},
};

static PyMethodDef Receiver_methods[] = {
    {"pump", (PyCFunction)Receiver_pump, METH_NOARGS, "read and stage; what it stopped at"},
    {"feed", (PyCFunction)Receiver_feed, METH_O, "plaintext that came before the loop"},
    {"take_frame", (PyCFunction)Receiver_take_frame, METH_NOARGS, "(type, flags, body) of the frame it stopped at"},
    {"take_rest", (PyCFunction)Receiver_take_rest, METH_NOARGS, "every plaintext byte not yet taken"},
    {"apply", (PyCFunction)Receiver_apply, METH_VARARGS, "write staged journals up to a SEQ#"},
    {"drop", (PyCFunction)Receiver_drop, METH_NOARGS, "forget every staged journal"},
    {NULL},
};

static PyTypeObject ReceiverType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_restore.Receiver",
    .tp_basicsize = sizeof(Receiver),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Receiver_init,
    .tp_dealloc = (destructor)Receiver_dealloc,
    .tp_methods = Receiver_methods,
    .tp_getset = Receiver_getset,
};

/* ---- module ------------------------------------------------------------------------ */

static int field_of(PyObject *d, const char *name, field *f) {
    PyObject *v = PyDict_GetItemString(d, name);
    if (!v || !PyArg_ParseTuple(v, "ii", &f->off, &f->size) || f->size < 1 || f->size > 8) {
        if (!PyErr_Occurred()) PyErr_Format(PyExc_KeyError, "layout field %s", name);
        return -1;
    }
    return 0;
}

static PyObject *configure(PyObject *m, PyObject *d) {
    PyObject *maxl, *kinds;
    if (!PyDict_Check(d)) return PyErr_Format(PyExc_TypeError, "a dict");
#define INT(name, dst) do { PyObject *v = PyDict_GetItemString(d, name); \
        if (!v) return PyErr_Format(PyExc_KeyError, name); \
        dst = PyLong_AsLong(v); } while (0)
    long magic, flags_ok;
    INT("magic", magic);
    INT("version", L.version);
    INT("header", L.header);
    INT("trailer", L.trailer);
    INT("control", L.control);
    INT("jnlwr", L.t_jnlwr);
    INT("ccrc_span", L.ccrc_span);
    INT("flags_ok", flags_ok);
#undef INT
    if (PyErr_Occurred()) return NULL;
    L.magic = (uint32_t)magic;
    L.flags_ok = (uint32_t)flags_ok;
    for (int i = 0; i < 256; i++) { L.max_len[i] = -1; L.kind_data[i] = L.kind_zero[i] = 0; }
    if (!(maxl = PyDict_GetItemString(d, "max_length")) || !PyDict_Check(maxl))
        return PyErr_Format(PyExc_KeyError, "max_length");
    PyObject *k, *v;
    Py_ssize_t i = 0;
    while (PyDict_Next(maxl, &i, &k, &v)) {
        long t = PyLong_AsLong(k), n = PyLong_AsLong(v);
        if (PyErr_Occurred() || t < 0 || t > 255) return PyErr_Format(PyExc_ValueError, "frame type");
        L.max_len[t] = n;
    }
    for (int z = 0; z < 2; z++) {
        const char *key = z ? "zero_kinds" : "data_kinds";
        char *table = z ? L.kind_zero : L.kind_data;
        if (!(kinds = PyDict_GetItemString(d, key))) return PyErr_Format(PyExc_KeyError, key);
        PyObject *it = PyObject_GetIter(kinds);
        if (!it) return NULL;
        while ((v = PyIter_Next(it))) {
            long kd = PyLong_AsLong(v);
            Py_DECREF(v);
            if (kd >= 0 && kd < 256) table[kd] = 1;
        }
        Py_DECREF(it);
    }
    if (PyErr_Occurred()) return NULL;
    if (field_of(d, "seq", &L.seq) || field_of(d, "time", &L.time) || field_of(d, "address", &L.address)
        || field_of(d, "length", &L.length) || field_of(d, "data_len", &L.data_len)
        || field_of(d, "data_crc", &L.data_crc) || field_of(d, "epoch", &L.epoch)
        || field_of(d, "idx", &L.idx) || field_of(d, "kind", &L.kind) || field_of(d, "group", &L.group)
        || field_of(d, "tag", &L.tag) || field_of(d, "ccrc", &L.ccrc))
        return NULL;
    L.ready = 1;
    Py_RETURN_NONE;
}

static PyObject *py_crc32c(PyObject *m, PyObject *args) {
    Py_buffer b;
    unsigned int crc = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &b, &crc)) return NULL;
    uint32_t c = crc32c(b.buf, b.len, crc);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(c);
}

static PyObject *py_ssl_ok(PyObject *m, PyObject *args) {
    PyObject *obj;
    unsigned long ver;
    if (!PyArg_ParseTuple(args, "Ok", &obj, &ver)) return NULL;
    if (!ssl_of(obj, ver)) return NULL;
    Py_RETURN_TRUE;
}

static PyMethodDef module_methods[] = {
    {"configure", configure, METH_O, "the wire layout (host/wire/protocol.py)"},
    {"crc32c", py_crc32c, METH_VARARGS, "CRC32C as the crc32c package computes it"},
    {"ssl_ok", py_ssl_ok, METH_VARARGS, "True if this TLS session can be handed over, else raises why"},
    {NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_restore", NULL, -1, module_methods};

PyMODINIT_FUNC PyInit__restore(void) {
    crc_init();
    if (PyType_Ready(&ReceiverType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&ReceiverType);
    PyModule_AddObject(m, "Receiver", (PyObject *)&ReceiverType);
    PyModule_AddIntConstant(m, "NEED", NEED);
    PyModule_AddIntConstant(m, "FRAME", FRAME);
    PyModule_AddIntConstant(m, "BAD", BAD);
    PyModule_AddIntConstant(m, "FULL", FULL);
    PyModule_AddIntConstant(m, "EOF", EOF_);
    PyModule_AddIntConstant(m, "TLS_ERR", TLS_ERR);
    return m;
}
