/* changelog._speedups: the collector's hot encoder in C (issue 17).
 *
 * encode_raw_many(items, version) -> list[bytes] | None is
 * changelog.pipeline.logformat._encode_raw_many_py byte for byte: for each (recorded time,
 * stored msgpack value) it writes the JSON line orjson would write for the record (field order,
 * escaping, integers, RFC 3339 times from gmtime, the event id as blake2b-128 hex of
 * "src\np"). It handles the value shapes Mutation.encode_with packs: a map of str keys to
 * str, int, bool and nil, and "m" a map of str to str. On anything else (another type, a
 * duplicate metadata key, a time before 1970 or past 9999, a torn or invalid value) it returns
 * None and the Python encoder redoes the whole call, so every error, and its message, is the
 * Python one: this module is never the only judge of a value. encode_entries(entries, start,
 * end, version) -> (times, lines) | None does the same for index entries (key, stored value)
 * whose keys hold the recorded time in hex at [start:end] (the collector's pages): the times
 * are parsed here too, as int(key[start:end], 16) for plain hex digits.
 *
 * The encoding runs without the GIL (the collector's reader and uploader threads go on): the
 * values are bytes, held by references taken before and dropped after. It links only libc.
 *
 * The record path (changelog.pipeline.index, issue 17): prepare_records(batch, shards, Mutation)
 * is index._prepare_py, one call per batch: each record's shard (blake2b-64 of the object), its
 * stored value (msgpack.Packer(use_bin_type=True) of Mutation.encode_with's map, byte for byte)
 * and its key tail (".<obj>.<ver>.<event>": keys.data_key after the time), read from the
 * Mutation's slots. It returns None for anything but the plain shapes (a str subclass, a
 * surrogate, a value too large, a Mutation subclass) and the Python reference decides, errors
 * included. It holds the GIL: it builds Python objects all along. (The keys themselves, the time
 * and the tail joined per shard, cost the same in C as in Python, measured: bound by reaching
 * the batch's objects in memory, not by the interpreter; they stay in Python.)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <structmember.h> /* T_OBJECT_EX, READONLY: the Mutation's slots */

#include "_speedups_blake2b.h"

/* ---- msgpack: the subset a Mutation packs --------------------------------------------------- */

enum { V_ABSENT = 0, V_NIL, V_BOOL, V_INT, V_UINT, V_STR, V_MAP };

typedef struct {
    int kind;
    const uint8_t *s; /* V_STR: the UTF-8 bytes; V_MAP: the first key */
    uint32_t len;     /* V_STR: bytes; V_MAP: pairs */
    int64_t i;        /* V_INT (any int that fits), V_BOOL */
    uint64_t u;       /* V_UINT: above INT64_MAX; V_MAP: bytes of its pairs */
} Value;

typedef struct {
    const uint8_t *p, *end;
} Reader;

#define FALLBACK 1 /* not a shape handled here: the Python encoder decides */

/* Strict UTF-8 as Python decodes it: no overlongs, no surrogates, nothing past U+10FFFF. */
static int utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint64_t word;
        if (n - i >= 8 && (memcpy(&word, s + i, 8), (word & 0x8080808080808080ULL) == 0)) {
            i += 8; /* eight ASCII bytes: the common case */
            continue;
        }
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80)
                return 0;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (i + 2 >= n || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80)
                return 0;
            if ((c == 0xE0 && s[i + 1] < 0xA0) || (c == 0xED && s[i + 1] >= 0xA0))
                return 0; /* overlong; surrogate */
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (i + 3 >= n || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80
                || (s[i + 3] & 0xC0) != 0x80)
                return 0;
            if ((c == 0xF0 && s[i + 1] < 0x90) || (c == 0xF4 && s[i + 1] >= 0x90))
                return 0; /* overlong; past U+10FFFF */
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

static int take(Reader *r, size_t n, const uint8_t **out)
{
    if ((size_t)(r->end - r->p) < n)
        return FALLBACK;
    *out = r->p;
    r->p += n;
    return 0;
}

static int read_uint(Reader *r, size_t width, uint64_t *out)
{
    const uint8_t *b;
    if (take(r, width, &b))
        return FALLBACK;
    uint64_t v = 0;
    for (size_t k = 0; k < width; k++)
        v = (v << 8) | b[k];
    *out = v;
    return 0;
}

static int read_str_body(Reader *r, uint64_t n, Value *v)
{
    if (n > UINT32_MAX || take(r, (size_t)n, &v->s) || !utf8_valid(v->s, (size_t)n))
        return FALLBACK;
    v->kind = V_STR;
    v->len = (uint32_t)n;
    return 0;
}

/* A str key or value; anything else is FALLBACK. */
static int read_str(Reader *r, Value *v)
{
    uint64_t n;
    if (r->p >= r->end)
        return FALLBACK;
    uint8_t c = *r->p++;
    if ((c & 0xE0) == 0xA0)
        n = c & 0x1F;
    else if (c < 0xD9 || c > 0xDB || read_uint(r, (size_t)1 << (c - 0xD9), &n))
        return FALLBACK;
    return read_str_body(r, n, v);
}

static int read_map_header(Reader *r, uint64_t *n)
{
    if (r->p >= r->end)
        return FALLBACK;
    uint8_t c = *r->p++;
    if ((c & 0xF0) == 0x80) {
        *n = c & 0x0F;
        return 0;
    }
    if (c == 0xDE)
        return read_uint(r, 2, n);
    if (c == 0xDF)
        return read_uint(r, 4, n);
    return FALLBACK;
}

static int read_signed(Reader *r, size_t width, Value *v)
{
    uint64_t u;
    if (read_uint(r, width, &u))
        return FALLBACK;
    int shift = (int)(64 - 8 * width);
    v->kind = V_INT;
    v->i = (int64_t)(u << shift) >> shift; /* sign-extend */
    return 0;
}

/* One value: nil, bool, int, str, or a map of str to str (skipped over, checked). */
static int read_value(Reader *r, Value *v)
{
    uint64_t u;
    if (r->p >= r->end)
        return FALLBACK;
    uint8_t c = *r->p;
    if ((c & 0xE0) == 0xA0 || (c >= 0xD9 && c <= 0xDB))
        return read_str(r, v);
    if ((c & 0xF0) == 0x80 || c == 0xDE || c == 0xDF) {
        if (read_map_header(r, &u) || u > UINT32_MAX)
            return FALLBACK;
        v->kind = V_MAP;
        v->s = r->p;
        v->len = (uint32_t)u;
        for (uint64_t k = 0; k < 2 * u; k++) {
            Value item;
            if (read_str(r, &item))
                return FALLBACK;
        }
        v->u = (uint64_t)(r->p - v->s);
        return 0;
    }
    r->p++;
    if (c <= 0x7F || c >= 0xE0) {
        v->kind = V_INT;
        v->i = (int8_t)c;
        return 0;
    }
    switch (c) {
    case 0xC0: v->kind = V_NIL; return 0;
    case 0xC2: case 0xC3: v->kind = V_BOOL; v->i = c == 0xC3; return 0;
    case 0xCC: case 0xCD: case 0xCE: case 0xCF:
        if (read_uint(r, (size_t)1 << (c - 0xCC), &u))
            return FALLBACK;
        v->kind = u > INT64_MAX ? V_UINT : V_INT;
        v->u = u;
        v->i = (int64_t)u;
        return 0;
    case 0xD0: case 0xD1: case 0xD2: case 0xD3:
        return read_signed(r, (size_t)1 << (c - 0xD0), v);
    default:
        return FALLBACK; /* float, bin, array, ext */
    }
}

/* The fields of one stored value, by their packed names (Mutation.encode_with). */
typedef struct {
    Value b, k, o, t, src, p, q, v, s, e, bl, m, tn, mt, sc;
} Fields;

static Value *field_of(Fields *f, const uint8_t *name, uint32_t n)
{
#define NAMED(lit, member) \
    if (n == sizeof(lit) - 1 && memcmp(name, lit, n) == 0) \
        return &f->member;
    NAMED("b", b) NAMED("k", k) NAMED("o", o) NAMED("t", t) NAMED("src", src) NAMED("p", p)
    NAMED("q", q) NAMED("v", v) NAMED("s", s) NAMED("e", e) NAMED("bl", bl) NAMED("m", m)
    NAMED("tn", tn) NAMED("mt", mt) NAMED("sc", sc)
#undef NAMED
    return NULL;
}

/* The whole value must be one map; a repeated name keeps its last value, as a dict does. */
static int read_fields(const uint8_t *raw, size_t len, Fields *f)
{
    Reader r = {raw, raw + len};
    uint64_t n;
    memset(f, 0, sizeof *f);
    if (read_map_header(&r, &n))
        return FALLBACK;
    for (uint64_t k = 0; k < n; k++) {
        Value name, value;
        if (read_str(&r, &name) || read_value(&r, &value))
            return FALLBACK;
        Value *slot = field_of(f, name.s, name.len);
        if (slot != NULL)
            *slot = value;
    }
    return r.p == r.end ? 0 : FALLBACK; /* trailing bytes: msgpack's ExtraData */
}

/* ---- JSON out ------------------------------------------------------------------------------ */

typedef struct {
    char *buf;
    size_t len, cap;
} Out;

static int out_reserve(Out *o, size_t extra)
{
    if (o->cap - o->len >= extra)
        return 0;
    size_t cap = o->cap ? o->cap : 64 * 1024;
    while (cap - o->len < extra)
        cap *= 2;
    char *buf = PyMem_RawRealloc(o->buf, cap);
    if (buf == NULL)
        return -1;
    o->buf = buf;
    o->cap = cap;
    return 0;
}

/* Callers reserve room first (out_reserve): the writers below do not check. */
static inline void put(Out *o, const char *s, size_t n)
{
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}

#define PUT_LIT(o, lit) put((o), (lit), sizeof(lit) - 1)

/* orjson's escapes: 0, the byte as is; 'u', \u00XX (lowercase hex); else the letter after the
 * backslash (\b \t \n \f \r \" \\). Non-ASCII, DEL and '/' are not escaped. */
static char ESCAPE[256];

static void init_escape(void)
{
    for (int c = 0; c < 0x20; c++)
        ESCAPE[c] = 'u';
    ESCAPE['\b'] = 'b', ESCAPE['\t'] = 't', ESCAPE['\n'] = 'n', ESCAPE['\f'] = 'f', ESCAPE['\r'] = 'r';
    ESCAPE['"'] = '"', ESCAPE['\\'] = '\\';
}

static void put_str(Out *o, const uint8_t *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char *w = o->buf + o->len;
    *w++ = '"';
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        while (run < n && !ESCAPE[s[run]])
            run++;
        memcpy(w, s + i, run - i);
        w += run - i;
        if (run == n)
            break;
        uint8_t c = s[run];
        *w++ = '\\';
        *w++ = ESCAPE[c];
        if (ESCAPE[c] == 'u') {
            memcpy(w, "00", 2);
            w[2] = hex[c >> 4];
            w[3] = hex[c & 15];
            w += 4;
        }
        i = run + 1;
    }
    *w++ = '"';
    o->len = (size_t)(w - o->buf);
}

static void put_u64(Out *o, uint64_t u)
{
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    while (n)
        o->buf[o->len++] = digits[--n];
}

static void put_int(Out *o, const Value *v)
{
    if (v->kind == V_UINT) {
        put_u64(o, v->u);
    } else if (v->i < 0) {
        o->buf[o->len++] = '-';
        put_u64(o, (uint64_t)0 - (uint64_t)v->i);
    } else {
        put_u64(o, (uint64_t)v->i);
    }
}

/* A str, or null for nil and an absent field: the fields read with d.get(). */
static int put_opt_str(Out *o, const Value *v)
{
    if (v->kind == V_STR)
        put_str(o, v->s, v->len);
    else if (v->kind == V_NIL || v->kind == V_ABSENT)
        PUT_LIT(o, "null");
    else
        return FALLBACK;
    return 0;
}

/* ---- times: rfc3339_us ------------------------------------------------------------------------ */

/* The last second formatted ("YYYY-MM-DDTHH:MM:SS"): entries come in time order. */
typedef struct {
    int64_t sec;
    char text[20];
} SecondCache;

/* Floor division, as Python's // (values may be negative). */
static inline int64_t floordiv(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* "YYYY-MM-DDTHH:MM:SS.ffffffZ" (27 chars) of microseconds since the epoch. Years 1970-9999
 * only (time.strftime's %Y is 4 digits there); others go to the Python encoder. */
static int put_time(Out *o, SecondCache *c, int64_t t_us)
{
    int64_t sec = floordiv(t_us, 1000000);
    int64_t us = t_us - sec * 1000000;
    if (sec < 0 || sec >= 253402300800LL)
        return FALLBACK;
    if (c->sec != sec) {
        time_t tt = (time_t)sec;
        struct tm tm;
        if (gmtime_r(&tt, &tm) == NULL)
            return FALLBACK;
        /* The fields are in range (years 1970-9999 checked above): fixed-width digits. */
        const int parts[6] = {tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec};
        static const int at[6] = {0, 5, 8, 11, 14, 17}, width[6] = {4, 2, 2, 2, 2, 2};
        memcpy(c->text, "0000-00-00T00:00:00", 20);
        for (int k = 0; k < 6; k++)
            for (int d = width[k] - 1, x = parts[k]; d >= 0; d--, x /= 10)
                c->text[at[k] + d] = (char)('0' + x % 10);
        c->sec = sec;
    }
    char *w = o->buf + o->len;
    *w++ = '"';
    memcpy(w, c->text, 19);
    w += 19;
    *w++ = '.';
    for (int k = 5; k >= 0; k--) {
        w[k] = (char)('0' + us % 10);
        us /= 10;
    }
    w += 6;
    *w++ = 'Z';
    *w++ = '"';
    o->len = (size_t)(w - o->buf);
    return 0;
}

/* A packed nanosecond time's microseconds (``t // 1000`` of an int; others: FALLBACK). */
static int us_of_ns(const Value *v, int64_t *out)
{
    if (v->kind == V_UINT)
        *out = (int64_t)(v->u / 1000);
    else if (v->kind == V_INT)
        *out = floordiv(v->i, 1000);
    else
        return FALLBACK;
    return 0;
}

/* ---- one record ------------------------------------------------------------------------------ */

typedef struct {
    const uint8_t *key, *value;
    uint32_t key_len, value_len;
} MetaItem;

typedef struct {
    Out out;
    SecondCache time_cache, mtime_cache, recorded_cache;
    uint8_t *scratch; /* "src\np" for the event id */
    size_t scratch_cap;
    MetaItem *meta;
    size_t meta_cap;
    char head[40]; /* {"v":<version>,"id": */
    size_t head_len;
} Encoder;

static int meta_cmp(const void *a, const void *b)
{
    const MetaItem *x = a, *y = b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    if (c)
        return c;
    return (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

/* ``"metadata":{...}`` with keys sorted as Python sorts str (UTF-8 byte order is code point
 * order). A repeated key (a dict keeps its last value) goes to the Python encoder. */
static int put_metadata(Encoder *enc, const Value *m)
{
    Out *o = &enc->out;
    if (m->len > enc->meta_cap) {
        MetaItem *meta = PyMem_RawRealloc(enc->meta, m->len * sizeof *meta);
        if (meta == NULL)
            return -1;
        enc->meta = meta;
        enc->meta_cap = m->len;
    }
    Reader r = {m->s, m->s + m->u};
    for (uint32_t k = 0; k < m->len; k++) {
        Value key, value;
        if (read_str(&r, &key) || read_str(&r, &value))
            return FALLBACK; /* read_value read them already: cannot happen */
        enc->meta[k] = (MetaItem){key.s, value.s, key.len, value.len};
    }
    qsort(enc->meta, m->len, sizeof *enc->meta, meta_cmp);
    PUT_LIT(o, ",\"metadata\":{");
    for (uint32_t k = 0; k < m->len; k++) {
        if (k && meta_cmp(&enc->meta[k - 1], &enc->meta[k]) == 0)
            return FALLBACK;
        if (k)
            PUT_LIT(o, ",");
        put_str(o, enc->meta[k].key, enc->meta[k].key_len);
        PUT_LIT(o, ":");
        put_str(o, enc->meta[k].value, enc->meta[k].value_len);
    }
    PUT_LIT(o, "}");
    return 0;
}

/* The event id: blake2b-128 hex of f"{src}\n{p}". */
static int put_event_id(Encoder *enc, const Value *src, const Value *p)
{
    if (src->kind != V_STR || p->kind != V_STR)
        return FALLBACK;
    size_t n = (size_t)src->len + 1 + p->len;
    if (n > enc->scratch_cap) {
        uint8_t *scratch = PyMem_RawRealloc(enc->scratch, n);
        if (scratch == NULL)
            return -1;
        enc->scratch = scratch;
        enc->scratch_cap = n;
    }
    memcpy(enc->scratch, src->s, src->len);
    enc->scratch[src->len] = '\n';
    memcpy(enc->scratch + src->len + 1, p->s, p->len);
    PUT_LIT(&enc->out, "\"");
    b2_hex16(enc->scratch, n, enc->out.buf + enc->out.len);
    enc->out.len += 32;
    PUT_LIT(&enc->out, "\"");
    return 0;
}

/* Returns FALLBACK or -1 (no memory) from the enclosing function. */
#define CHECK(expr) do { int rc_ = (expr); if (rc_) return rc_; } while (0)

/* The fields a record requires, and the types handled here. */
static int check_shapes(const Fields *f)
{
    if (f->b.kind != V_STR || f->o.kind != V_STR || f->q.kind != V_STR)
        return FALLBACK;
    if (f->k.kind != V_STR && f->k.kind != V_NIL)
        return FALLBACK;
    if (f->s.kind != V_ABSENT && f->s.kind != V_NIL && f->s.kind != V_INT && f->s.kind != V_UINT)
        return FALLBACK;
    if (f->mt.kind != V_ABSENT && f->mt.kind != V_NIL && f->mt.kind != V_INT && f->mt.kind != V_UINT)
        return FALLBACK;
    if (f->bl.kind != V_ABSENT && f->bl.kind != V_NIL && f->bl.kind != V_BOOL && f->bl.kind != V_INT)
        return FALLBACK;
    if (f->m.kind != V_ABSENT && f->m.kind != V_NIL && f->m.kind != V_MAP)
        return FALLBACK;
    return 0;
}

/* One JSON line of (recorded time, value), as _encode_raw_many_py writes it. */
static int encode_one(Encoder *enc, int64_t recorded_us, const uint8_t *raw, size_t len)
{
    Fields f;
    int64_t t_us, mt_us;
    Out *o = &enc->out;
    CHECK(read_fields(raw, len, &f));
    CHECK(check_shapes(&f));
    CHECK(us_of_ns(&f.t, &t_us));
    /* Strings may grow 6x escaped (\u00XX); the rest is bounded by 512 bytes. */
    if (len > (SIZE_MAX - 1024) / 6 || out_reserve(o, 6 * len + 1024))
        return -1;
    put(o, enc->head, enc->head_len);
    CHECK(put_event_id(enc, &f.src, &f.p));
    PUT_LIT(o, ",\"time\":");
    CHECK(put_time(o, &enc->time_cache, t_us));
    PUT_LIT(o, ",\"op\":");
    put_str(o, f.o.s, f.o.len);
    PUT_LIT(o, ",\"tenant\":");
    CHECK(put_opt_str(o, &f.tn));
    PUT_LIT(o, ",\"bucket\":");
    put_str(o, f.b.s, f.b.len);
    PUT_LIT(o, ",\"key\":");
    if (f.k.kind == V_STR && f.k.len)
        put_str(o, f.k.s, f.k.len);
    else
        PUT_LIT(o, "null"); /* d["k"] or None */
    PUT_LIT(o, ",\"version_id\":");
    CHECK(put_opt_str(o, &f.v));
    PUT_LIT(o, ",\"size\":");
    if (f.s.kind == V_INT || f.s.kind == V_UINT)
        put_int(o, &f.s);
    else
        PUT_LIT(o, "null");
    PUT_LIT(o, ",\"etag\":");
    CHECK(put_opt_str(o, &f.e));
    PUT_LIT(o, ",\"mtime\":");
    if (f.mt.kind == V_INT || f.mt.kind == V_UINT) {
        CHECK(us_of_ns(&f.mt, &mt_us));
        CHECK(put_time(o, &enc->mtime_cache, mt_us));
    } else {
        PUT_LIT(o, "null");
    }
    PUT_LIT(o, ",\"storage_class\":");
    CHECK(put_opt_str(o, &f.sc));
    PUT_LIT(o, ",\"seq\":");
    put_str(o, f.q.s, f.q.len);
    if ((f.bl.kind == V_BOOL || f.bl.kind == V_INT) && f.bl.i != 0)
        PUT_LIT(o, ",\"baseline\":true,\"recorded\":");
    else
        PUT_LIT(o, ",\"baseline\":false,\"recorded\":");
    CHECK(put_time(o, &enc->recorded_cache, recorded_us));
    if (f.m.kind == V_MAP && f.m.len)
        CHECK(put_metadata(enc, &f.m));
    PUT_LIT(o, "}\n");
    return 0;
}

/* ---- the call ------------------------------------------------------------------------------- */

typedef struct {
    Py_ssize_t n;
    int64_t *times;
    PyObject **raws; /* strong references: the values' bytes stay put without the GIL */
    size_t *ends;    /* end offset of each line in the output */
    Py_ssize_t time_start, time_end; /* keyed: the recorded time is key[start:end] in hex */
} Batch;

static void batch_free(Batch *b)
{
    if (b->raws != NULL)
        for (Py_ssize_t k = 0; k < b->n; k++)
            Py_XDECREF(b->raws[k]);
    PyMem_Free(b->times);
    PyMem_Free(b->raws);
    PyMem_Free(b->ends);
}

/* int(key[start:end], 16) of an ASCII str key, for plain hex digits only. */
static int key_time(const Batch *b, PyObject *key, int64_t *out)
{
    if (!PyUnicode_CheckExact(key) || !PyUnicode_IS_ASCII(key) || PyUnicode_GET_LENGTH(key) < b->time_end)
        return FALLBACK;
    const char *s = (const char *)PyUnicode_DATA(key);
    uint64_t v = 0;
    for (Py_ssize_t i = b->time_start; i < b->time_end; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return FALLBACK;
        v = v << 4 | (uint64_t)d;
    }
    if (v > INT64_MAX)
        return FALLBACK;
    *out = (int64_t)v;
    return 0;
}

/* A pair's recorded time: an int, or (keyed) the time in its key. */
static int item_time(const Batch *b, PyObject *t, int64_t *out)
{
    if (b->time_end)
        return key_time(b, t, out);
    if (!PyLong_CheckExact(t))
        return FALLBACK;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(t, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return FALLBACK;
    }
    *out = v;
    return 0;
}

/* The (time or key, bytes) pairs of ``seq``: 0, FALLBACK for another shape, -1 with an
 * exception set. */
static int batch_collect(PyObject *seq, Batch *b)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    b->times = PyMem_Calloc((size_t)n + 1, sizeof *b->times);
    b->raws = PyMem_Calloc((size_t)n + 1, sizeof *b->raws);
    b->ends = PyMem_Calloc((size_t)n + 1, sizeof *b->ends);
    if (b->times == NULL || b->raws == NULL || b->ends == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *item = items[k];
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2)
            return FALLBACK;
        PyObject *raw = PyTuple_GET_ITEM(item, 1);
        if (!PyBytes_CheckExact(raw) || item_time(b, PyTuple_GET_ITEM(item, 0), &b->times[k]))
            return FALLBACK;
        Py_INCREF(raw);
        b->raws[k] = raw;
        b->n = k + 1;
    }
    return 0;
}

static int encode_batch(Encoder *enc, Batch *b)
{
    for (Py_ssize_t k = 0; k < b->n; k++) {
        PyObject *raw = b->raws[k];
        CHECK(encode_one(enc, b->times[k], (const uint8_t *)PyBytes_AS_STRING(raw),
                         (size_t)PyBytes_GET_SIZE(raw)));
        b->ends[k] = enc->out.len;
    }
    return 0;
}

static PyObject *lines_of(const Encoder *enc, const Batch *b)
{
    PyObject *lines = PyList_New(b->n);
    size_t start = 0;
    for (Py_ssize_t k = 0; lines != NULL && k < b->n; k++) {
        PyObject *line = PyBytes_FromStringAndSize(enc->out.buf + start, (Py_ssize_t)(b->ends[k] - start));
        if (line == NULL)
            Py_CLEAR(lines);
        else
            PyList_SET_ITEM(lines, k, line);
        start = b->ends[k];
    }
    return lines;
}

/* The times of a keyed batch, as a list of int. */
static PyObject *times_of(const Batch *b)
{
    PyObject *times = PyList_New(b->n);
    for (Py_ssize_t k = 0; times != NULL && k < b->n; k++) {
        PyObject *t = PyLong_FromLongLong(b->times[k]);
        if (t == NULL)
            Py_CLEAR(times);
        else
            PyList_SET_ITEM(times, k, t);
    }
    return times;
}

/* Both entry points: lines, or (keyed) (times, lines); None: the Python encoder's turn. */
static PyObject *encode(PyObject *items, Batch *batch, long long version)
{
    PyObject *seq, *lines, *times, *result = NULL;
    Encoder enc = {.time_cache.sec = -1, .mtime_cache.sec = -1, .recorded_cache.sec = -1};
    enc.head_len = (size_t)snprintf(enc.head, sizeof enc.head, "{\"v\":%lld,\"id\":", version);
    seq = PySequence_Fast(items, "items must be a sequence");
    if (seq == NULL)
        return NULL;
    int rc = batch_collect(seq, batch);
    Py_DECREF(seq);
    if (rc == 0) {
        Py_BEGIN_ALLOW_THREADS
        rc = encode_batch(&enc, batch);
        Py_END_ALLOW_THREADS
        if (rc < 0)
            PyErr_NoMemory();
    }
    if (rc == 0 && (lines = lines_of(&enc, batch)) != NULL) {
        if (!batch->time_end)
            result = lines;
        else if ((times = times_of(batch)) != NULL)
            result = PyTuple_Pack(2, times, lines), Py_DECREF(times), Py_DECREF(lines);
        else
            Py_DECREF(lines);
    } else if (rc == FALLBACK) {
        result = Py_NewRef(Py_None);
    }
    batch_free(batch);
    PyMem_RawFree(enc.out.buf);
    PyMem_RawFree(enc.scratch);
    PyMem_RawFree(enc.meta);
    return result;
}

static PyObject *encode_raw_many(PyObject *module, PyObject *args)
{
    PyObject *items;
    long long version;
    Batch batch = {0};
    (void)module;
    if (!PyArg_ParseTuple(args, "OL:encode_raw_many", &items, &version))
        return NULL;
    return encode(items, &batch, version);
}

static PyObject *encode_entries(PyObject *module, PyObject *args)
{
    PyObject *items;
    long long version;
    Batch batch = {0};
    (void)module;
    if (!PyArg_ParseTuple(args, "OnnL:encode_entries", &items, &batch.time_start, &batch.time_end, &version))
        return NULL;
    if (batch.time_start < 0 || batch.time_end - batch.time_start < 1 || batch.time_end - batch.time_start > 16) {
        PyErr_SetString(PyExc_ValueError, "the time is 1 to 16 hex digits");
        return NULL;
    }
    return encode(items, &batch, version);
}

static PyObject *event_id(PyObject *module, PyObject *args)
{
    const char *data;
    Py_ssize_t len;
    char hex[32];
    (void)module;
    if (!PyArg_ParseTuple(args, "y#:event_id", &data, &len))
        return NULL;
    b2_hex16((const uint8_t *)data, (size_t)len, hex);
    return PyUnicode_FromStringAndSize(hex, 32);
}

/* ---- the record path (changelog.pipeline.index) ---------------------------------------------- */

/* blake2b(msg) with an ``outlen``-byte digest (1..64): hashlib.blake2b(digest_size=outlen). */
static void b2_digest(const uint8_t *msg, size_t len, size_t outlen, uint8_t *out)
{
    uint64_t h[8];
    uint8_t block[128];
    size_t off = 0;
    memcpy(h, B2_IV, sizeof h);
    h[0] ^= 0x01010000ULL ^ (uint64_t)outlen; /* depth 1, fanout 1, no key */
    while (len - off > 128) {
        b2_compress(h, msg + off, (uint64_t)(off + 128), 0);
        off += 128;
    }
    memcpy(block, msg + off, len - off);
    memset(block + (len - off), 0, sizeof block - (len - off));
    b2_compress(h, block, (uint64_t)len, 1);
    for (size_t i = 0; i < outlen; i++)
        out[i] = (uint8_t)(h[i / 8] >> (8 * (i % 8)));
}

static void put_hex(char *w, const uint8_t *bytes, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        w[2 * i] = hex[bytes[i] >> 4];
        w[2 * i + 1] = hex[bytes[i] & 15];
    }
}

/* The Mutation fields, read straight from their slots (a frozen slots dataclass: every slot is
 * set by __init__). The offsets are those of the class passed in, looked up once per class. */
enum {
    F_BUCKET, F_KEY, F_OP, F_MTIME, F_SOURCE, F_POSITION, F_SEQ, F_VERSION, F_SIZE, F_ETAG,
    F_BASELINE, F_METADATA, F_TENANT, F_OBJ_MTIME, F_STORAGE_CLASS, F_COUNT
};
static const char *const FIELD_NAMES[F_COUNT] = {
    "bucket", "key", "op", "mtime_ns", "source", "position", "seq", "version_id", "size", "etag",
    "baseline", "metadata", "tenant", "obj_mtime_ns", "storage_class",
};
static PyTypeObject *slots_type; /* strong reference: the class the offsets are of */
static Py_ssize_t slot_offset[F_COUNT];

/* 0: the offsets of ``type`` are known; FALLBACK: it is not a class of plain object slots. */
static int slots_of(PyTypeObject *type)
{
    Py_ssize_t offsets[F_COUNT];
    if (type == slots_type)
        return 0;
    for (int f = 0; f < F_COUNT; f++) {
        PyObject *d = PyDict_GetItemString(type->tp_dict, FIELD_NAMES[f]); /* borrowed */
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type))
            return FALLBACK;
        PyMemberDef *member = ((PyMemberDescrObject *)d)->d_member;
        if (member->type != T_OBJECT_EX || (member->flags & READONLY))
            return FALLBACK;
        offsets[f] = member->offset;
    }
    Py_INCREF(type);
    Py_XSETREF(slots_type, type);
    memcpy(slot_offset, offsets, sizeof offsets);
    return 0;
}

/* A field of ``m`` (borrowed; NULL if the slot is empty). */
static inline PyObject *slot(PyObject *m, int f)
{
    return *(PyObject **)((char *)m + slot_offset[f]);
}

/* The UTF-8 of an exact str (no copy for ASCII), or NULL (not exact, or a lone surrogate: the
 * error is cleared, Python decides). */
static const char *utf8_of(PyObject *s, Py_ssize_t *n)
{
    if (!PyUnicode_CheckExact(s))
        return NULL;
    const char *u = PyUnicode_AsUTF8AndSize(s, n);
    if (u == NULL)
        PyErr_Clear();
    return u;
}

/* msgpack as msgpack.Packer(use_bin_type=True) writes it. Callers reserve room first. */
static void mp_str_header(Out *o, size_t n)
{
    uint8_t *w = (uint8_t *)o->buf + o->len;
    if (n < 32) {
        w[0] = (uint8_t)(0xA0 | n);
        o->len += 1;
    } else if (n < 256) {
        w[0] = 0xD9, w[1] = (uint8_t)n;
        o->len += 2;
    } else if (n < 65536) {
        w[0] = 0xDA, w[1] = (uint8_t)(n >> 8), w[2] = (uint8_t)n;
        o->len += 3;
    } else {
        w[0] = 0xDB, w[1] = (uint8_t)(n >> 24), w[2] = (uint8_t)(n >> 16), w[3] = (uint8_t)(n >> 8), w[4] = (uint8_t)n;
        o->len += 5;
    }
}

static void mp_str(Out *o, const char *s, size_t n)
{
    mp_str_header(o, n);
    put(o, s, n);
}

/* A non-negative int, in the smallest form (positive fixint, uint8 .. uint64). */
static void mp_uint(Out *o, uint64_t u)
{
    uint8_t *w = (uint8_t *)o->buf + o->len;
    int width;
    if (u < 128) {
        w[0] = (uint8_t)u;
        o->len += 1;
        return;
    }
    if (u < 256)
        w[0] = 0xCC, width = 1;
    else if (u < 65536)
        w[0] = 0xCD, width = 2;
    else if (u <= UINT32_MAX)
        w[0] = 0xCE, width = 4;
    else
        w[0] = 0xCF, width = 8;
    for (int k = 0; k < width; k++)
        w[1 + k] = (uint8_t)(u >> (8 * (width - 1 - k)));
    o->len += 1 + (size_t)width;
}

/* An exact int in 0 .. 2**64 - 1, or FALLBACK. */
static int uint_of(PyObject *v, uint64_t *out)
{
    if (!PyLong_CheckExact(v))
        return FALLBACK;
    unsigned long long u = PyLong_AsUnsignedLongLong(v);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear(); /* negative or too large: Python's error */
        return FALLBACK;
    }
    *out = u;
    return 0;
}

/* keys.NULL_VERSION_HASH: blake2b-32 of "\0null" in hex (set at module init). */
static char NULL_VERSION_HEX[8];

/* mutation.MAX_ENCODED_BYTES: a larger value is Python's error to raise. */
#define MAX_ENCODED_BYTES (512 * 1024)

typedef struct {
    const char *s;
    Py_ssize_t n;
} Str;

/* Mutation.encode_with's bytes, into ``o`` (emptied first); and the key tail
 * ".<obj>.<ver>.<evt16>" (43 chars) into ``tail``; and the shard. FALLBACK for anything that
 * is not the plain shape (Python then decides, errors included); -1 without memory. */
static int prepare_one(PyObject *m, long long shards, Out *o, Out *scratch, char tail[43], long long *shard)
{
    enum { S_BUCKET, S_KEY, S_OP, S_SOURCE, S_POSITION, S_SEQ, S_COUNT };
    static const int required[S_COUNT] = {F_BUCKET, F_KEY, F_OP, F_SOURCE, F_POSITION, F_SEQ};
    Str str[S_COUNT], vid = {0}, etag = {0}, tenant = {0}, sc = {0};
    uint64_t mtime, size = 0, obj_mtime = 0;
    int has_size = 0, has_obj_mtime = 0, baseline = 0;
    PyObject *v, *meta;

    for (int k = 0; k < S_COUNT; k++) {
        v = slot(m, required[k]);
        if (v == NULL)
            return FALLBACK;
        if (required[k] == F_OP) { /* an Op: a str subclass whose text is its value */
            if (!PyUnicode_Check(v) || (str[k].s = PyUnicode_AsUTF8AndSize(v, &str[k].n)) == NULL) {
                PyErr_Clear();
                return FALLBACK;
            }
        } else if ((str[k].s = utf8_of(v, &str[k].n)) == NULL) {
            return FALLBACK;
        }
    }
    if ((v = slot(m, F_MTIME)) == NULL || uint_of(v, &mtime))
        return FALLBACK;
#define OPT_STR(field, var) \
    if ((v = slot(m, field)) == NULL || (v != Py_None && (var.s = utf8_of(v, &var.n)) == NULL)) \
        return FALLBACK;
    OPT_STR(F_VERSION, vid)
    OPT_STR(F_ETAG, etag)
    OPT_STR(F_STORAGE_CLASS, sc)
#undef OPT_STR
    if ((v = slot(m, F_SIZE)) == NULL || (v != Py_None && uint_of(v, &size)))
        return FALLBACK;
    has_size = v != Py_None;
    if ((v = slot(m, F_OBJ_MTIME)) == NULL || (v != Py_None && uint_of(v, &obj_mtime)))
        return FALLBACK;
    has_obj_mtime = v != Py_None;
    if ((v = slot(m, F_BASELINE)) == NULL || (v != Py_True && v != Py_False))
        return FALLBACK;
    baseline = v == Py_True;
    if ((v = slot(m, F_TENANT)) == NULL || (tenant.s = utf8_of(v, &tenant.n)) == NULL)
        return FALLBACK;
    if ((meta = slot(m, F_METADATA)) == NULL || !PyDict_CheckExact(meta))
        return FALLBACK;

    /* The value: the fields in encode_with's order, the optional ones only when set. */
    Py_ssize_t nmeta = PyDict_GET_SIZE(meta);
    size_t need = 64;
    for (int k = 0; k < S_COUNT; k++)
        need += 5 + (size_t)str[k].n;
    need += 5 + (size_t)vid.n + 5 + (size_t)etag.n + 5 + (size_t)tenant.n + 5 + (size_t)sc.n + 3 * 9 + 8;
    o->len = 0;
    if (out_reserve(o, need))
        return -1;
    int fields = 7 + (vid.s != NULL) + has_size + (etag.s != NULL) + baseline + (nmeta > 0)
                 + (tenant.n > 0) + has_obj_mtime + (sc.s != NULL);
    o->buf[o->len++] = (char)(0x80 | fields); /* at most 15: a fixmap */
    PUT_LIT(o, "\xa1" "b");
    mp_str(o, str[S_BUCKET].s, (size_t)str[S_BUCKET].n);
    PUT_LIT(o, "\xa1" "k");
    mp_str(o, str[S_KEY].s, (size_t)str[S_KEY].n);
    PUT_LIT(o, "\xa1" "o");
    mp_str(o, str[S_OP].s, (size_t)str[S_OP].n);
    PUT_LIT(o, "\xa1" "t");
    mp_uint(o, mtime);
    PUT_LIT(o, "\xa3" "src");
    mp_str(o, str[S_SOURCE].s, (size_t)str[S_SOURCE].n);
    PUT_LIT(o, "\xa1" "p");
    mp_str(o, str[S_POSITION].s, (size_t)str[S_POSITION].n);
    PUT_LIT(o, "\xa1" "q");
    mp_str(o, str[S_SEQ].s, (size_t)str[S_SEQ].n);
    if (vid.s != NULL) {
        PUT_LIT(o, "\xa1" "v");
        mp_str(o, vid.s, (size_t)vid.n);
    }
    if (has_size) {
        PUT_LIT(o, "\xa1" "s");
        mp_uint(o, size);
    }
    if (etag.s != NULL) {
        PUT_LIT(o, "\xa1" "e");
        mp_str(o, etag.s, (size_t)etag.n);
    }
    if (baseline)
        PUT_LIT(o, "\xa2" "bl" "\xc3");
    if (nmeta > 0) {
        PyObject *mk, *mv;
        Py_ssize_t pos = 0;
        if (out_reserve(o, 8))
            return -1;
        PUT_LIT(o, "\xa1" "m");
        if (nmeta < 16) {
            o->buf[o->len++] = (char)(0x80 | nmeta);
        } else if (nmeta < 65536) {
            uint8_t *w = (uint8_t *)o->buf + o->len;
            w[0] = 0xDE, w[1] = (uint8_t)(nmeta >> 8), w[2] = (uint8_t)nmeta;
            o->len += 3;
        } else {
            return FALLBACK;
        }
        while (PyDict_Next(meta, &pos, &mk, &mv)) {
            Str ks, vs;
            if ((ks.s = utf8_of(mk, &ks.n)) == NULL || (vs.s = utf8_of(mv, &vs.n)) == NULL)
                return FALLBACK;
            if ((size_t)ks.n + (size_t)vs.n > MAX_ENCODED_BYTES)
                return FALLBACK;
            if (out_reserve(o, 10 + (size_t)ks.n + (size_t)vs.n))
                return -1;
            mp_str(o, ks.s, (size_t)ks.n);
            mp_str(o, vs.s, (size_t)vs.n);
        }
        if (PyDict_GET_SIZE(meta) != nmeta)
            return FALLBACK;
    }
    if (tenant.n > 0) {
        PUT_LIT(o, "\xa2" "tn");
        mp_str(o, tenant.s, (size_t)tenant.n);
    }
    if (has_obj_mtime) {
        PUT_LIT(o, "\xa2" "mt");
        mp_uint(o, obj_mtime);
    }
    if (sc.s != NULL) {
        PUT_LIT(o, "\xa2" "sc");
        mp_str(o, sc.s, (size_t)sc.n);
    }
    if (o->len > MAX_ENCODED_BYTES)
        return FALLBACK;

    /* The shard and the object hash: blake2b-64 of "[tenant/]bucket\0key". */
    uint8_t digest[16];
    size_t n = (size_t)tenant.n + 1 + (size_t)str[S_BUCKET].n + 1 + (size_t)str[S_KEY].n
               + (size_t)str[S_SOURCE].n + (size_t)str[S_POSITION].n;
    scratch->len = 0;
    if (out_reserve(scratch, n))
        return -1;
    if (tenant.n > 0) {
        put(scratch, tenant.s, (size_t)tenant.n);
        PUT_LIT(scratch, "/");
    }
    put(scratch, str[S_BUCKET].s, (size_t)str[S_BUCKET].n);
    PUT_LIT(scratch, "\0");
    put(scratch, str[S_KEY].s, (size_t)str[S_KEY].n);
    b2_digest((const uint8_t *)scratch->buf, scratch->len, 8, digest);
    uint64_t h = 0;
    for (int k = 0; k < 8; k++)
        h = h << 8 | digest[k];
    *shard = (long long)(h % (uint64_t)shards);
    if (str[S_OP].n == 13 && memcmp(str[S_OP].s, "bucket_create", 13) == 0)
        *shard = 0;
    else if (str[S_OP].n == 13 && memcmp(str[S_OP].s, "bucket_delete", 13) == 0)
        *shard = shards - 1;
    tail[0] = '.';
    put_hex(tail + 1, digest, 8);
    tail[17] = '.';
    /* The version hash: blake2b-32 of the version id; the null version's of "\0null". */
    if (vid.s == NULL || (vid.n == 4 && memcmp(vid.s, "null", 4) == 0)) {
        memcpy(tail + 18, NULL_VERSION_HEX, 8); /* most records: hashed once */
    } else {
        b2_digest((const uint8_t *)vid.s, (size_t)vid.n, 4, digest);
        put_hex(tail + 18, digest, 4);
    }
    tail[26] = '.';
    /* The event id: blake2b-128 of "source\nposition", its first 8 bytes in hex. */
    scratch->len = 0;
    put(scratch, str[S_SOURCE].s, (size_t)str[S_SOURCE].n);
    PUT_LIT(scratch, "\n");
    put(scratch, str[S_POSITION].s, (size_t)str[S_POSITION].n);
    b2_digest((const uint8_t *)scratch->buf, scratch->len, 16, digest);
    put_hex(tail + 27, digest, 8);
    return 0;
}

/* prepare_records(batch, shards, mutation_type) -> {shard: [(m, value, tail)]} | None */
static PyObject *prepare_records(PyObject *module, PyObject *args)
{
    PyObject *items, *type, *seq, *by_shard = NULL, *lists[4096] = {NULL};
    long long shards;
    Out value = {0}, scratch = {0};
    int rc = 0;
    (void)module;
    if (!PyArg_ParseTuple(args, "OLO!:prepare_records", &items, &shards, &PyType_Type, &type))
        return NULL;
    if (shards < 1 || shards > 4096) {
        PyErr_SetString(PyExc_ValueError, "shards must be 1 to 4096");
        return NULL;
    }
    if (slots_of((PyTypeObject *)type))
        Py_RETURN_NONE;
    seq = PySequence_Fast(items, "items must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject **ms = PySequence_Fast_ITEMS(seq);
    by_shard = PyDict_New();
    for (Py_ssize_t i = 0; by_shard != NULL && rc == 0 && i < count; i++) {
        PyObject *m = ms[i];
        long long shard;
        char tail[43];
        if (Py_TYPE(m) != (PyTypeObject *)type) {
            rc = FALLBACK;
            break;
        }
        rc = prepare_one(m, shards, &value, &scratch, tail, &shard);
        if (rc)
            break;
        PyObject *raw = PyBytes_FromStringAndSize(value.buf, (Py_ssize_t)value.len);
        PyObject *tail_str = PyUnicode_FromStringAndSize(tail, 43);
        PyObject *pending = raw && tail_str ? PyTuple_Pack(3, m, raw, tail_str) : NULL;
        Py_XDECREF(raw);
        Py_XDECREF(tail_str);
        if (pending == NULL) {
            rc = -1;
            break;
        }
        PyObject *list = lists[shard];
        if (list == NULL) {
            PyObject *key = PyLong_FromLongLong(shard);
            list = PyList_New(0);
            if (key == NULL || list == NULL || PyDict_SetItem(by_shard, key, list) < 0) {
                Py_XDECREF(key);
                Py_XDECREF(list);
                Py_DECREF(pending);
                rc = -1;
                break;
            }
            Py_DECREF(key);
            Py_DECREF(list); /* the dict holds it */
            lists[shard] = list;
        }
        rc = PyList_Append(list, pending);
        Py_DECREF(pending);
    }
    Py_DECREF(seq);
    PyMem_RawFree(value.buf);
    PyMem_RawFree(scratch.buf);
    if (rc == FALLBACK) {
        Py_XDECREF(by_shard);
        Py_RETURN_NONE;
    }
    if (rc < 0 || by_shard == NULL) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        Py_XDECREF(by_shard);
        return NULL;
    }
    return by_shard;
}

static PyMethodDef METHODS[] = {
    {"encode_raw_many", encode_raw_many, METH_VARARGS,
     "encode_raw_many(items, version) -> list[bytes] | None: the JSON lines of (recorded time, "
     "stored value) pairs, or None for a shape only the Python encoder handles."},
    {"encode_entries", encode_entries, METH_VARARGS,
     "encode_entries(entries, time_start, time_end, version) -> (list[int], list[bytes]) | None: "
     "encode_raw_many of index entries (key, stored value) whose key holds the recorded time in "
     "hex at [time_start:time_end]: the times and the lines."},
    {"prepare_records", prepare_records, METH_VARARGS,
     "prepare_records(batch, shards, mutation_type) -> dict[int, list[(mutation, value, tail)]] | None: "
     "changelog.pipeline.index._prepare_py of a batch of exactly ``mutation_type``, or None for a "
     "record only the Python way handles."},
    {"event_id", event_id, METH_VARARGS,
     "event_id(data) -> str: blake2b-128 hex of data (the hash encode_raw_many uses; for tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "changelog._speedups",
    "The collector's hot encoder in C; changelog.pipeline.logformat falls back to Python without it.",
    -1, METHODS, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
    uint8_t null_version[4];
    init_escape();
    b2_digest((const uint8_t *)"\0null", 5, 4, null_version);
    put_hex(NULL_VERSION_HEX, null_version, 4);
    return PyModule_Create(&MODULE);
}
