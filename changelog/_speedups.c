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
 * and the tail joined per shard, cost the same in C as in Python when each is a Python str,
 * measured: bound by reaching the batch's objects in memory. For the RADOS store they are no
 * Python objects at all: fast_marks is the fast path's check (index._fast_marks_py) and
 * write_op_send writes the keys into one buffer and the op into librados, through librados'
 * functions at addresses ctypes looked up, as omap_get_keys reads: no librados at build time.)
 *
 * The follower's catch-up (rgw_module, issue 17): map_bilog_page is ShardMapper.map over the
 * rest of a bilog page (the Mutations made here straight into their slots, each value held to
 * what Mutation.__post_init__ checks), dir_entry is bucket_index._fast_dir_entry and
 * index_lookups is bucket_index.lookups; each hands back to the Python reference whatever is not
 * the plain shape (tests/unit/test_catchup_cpu.py compares them).
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

/* One shard's records of a batch, as prepare_records hands them over: the mutations (strong
 * references) and their values and key tails in two buffers, instead of a (mutation, value, tail)
 * tuple, a bytes and a str per record (three allocations a record, the tuple one the cyclic GC
 * counts). A read-only sequence of (mutation, value, tail) for Python (the general path, object
 * mode, the binding's way), each tuple made when asked for; write_op_send and record_rows read
 * the buffers. Not tracked by the GC: it refers only to frozen Mutations (strs, ints, a dict of
 * strs), which can be in no reference cycle. */
typedef struct {
    PyObject_HEAD
    Py_ssize_t n, cap;
    PyObject **ms;
    size_t *voff; /* value i is vals[voff[i] .. voff[i + 1]) */
    char *vals;
    size_t vlen, vcap;
    char *tails; /* 43 chars a record */
} RecordsObject;

static void records_dealloc(PyObject *self)
{
    RecordsObject *r = (RecordsObject *)self;
    for (Py_ssize_t i = 0; i < r->n; i++)
        Py_DECREF(r->ms[i]);
    PyMem_Free(r->ms);
    PyMem_Free(r->voff);
    PyMem_Free(r->vals);
    PyMem_Free(r->tails);
    Py_TYPE(self)->tp_free(self);
}

static Py_ssize_t records_len(PyObject *self)
{
    return ((RecordsObject *)self)->n;
}

static PyObject *records_item(PyObject *self, Py_ssize_t i)
{
    RecordsObject *r = (RecordsObject *)self;
    if (i < 0 || i >= r->n) {
        PyErr_SetString(PyExc_IndexError, "record index out of range");
        return NULL;
    }
    PyObject *v = PyBytes_FromStringAndSize(r->vals + r->voff[i], (Py_ssize_t)(r->voff[i + 1] - r->voff[i]));
    PyObject *t = PyUnicode_FromStringAndSize(r->tails + 43 * i, 43);
    PyObject *out = v && t ? PyTuple_Pack(3, r->ms[i], v, t) : NULL;
    Py_XDECREF(v);
    Py_XDECREF(t);
    return out;
}

static PySequenceMethods records_seq = {
    .sq_length = records_len,
    .sq_item = records_item,
};

static PyTypeObject RecordsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "changelog._speedups.Records",
    .tp_basicsize = sizeof(RecordsObject),
    .tp_dealloc = records_dealloc,
    .tp_as_sequence = &records_seq,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One shard's records of a batch (prepare_records): a sequence of (mutation, value, tail).",
};

static RecordsObject *records_new(void)
{
    RecordsObject *r = PyObject_New(RecordsObject, &RecordsType);
    if (r == NULL)
        return NULL;
    r->n = r->cap = 0;
    r->ms = NULL;
    r->voff = NULL;
    r->vals = r->tails = NULL;
    r->vlen = r->vcap = 0;
    return r;
}

/* Append record ``m`` with its value and tail; -1 without memory. */
static int records_add(RecordsObject *r, PyObject *m, const char *value, size_t vlen, const char *tail)
{
    if (r->n == r->cap) {
        Py_ssize_t cap = r->cap ? 2 * r->cap : 64;
        PyObject **ms = PyMem_Realloc(r->ms, sizeof(PyObject *) * (size_t)cap);
        if (ms == NULL)
            return -1;
        r->ms = ms;
        size_t *voff = PyMem_Realloc(r->voff, sizeof(size_t) * (size_t)(cap + 1));
        if (voff == NULL)
            return -1;
        r->voff = voff;
        char *tails = PyMem_Realloc(r->tails, 43 * (size_t)cap);
        if (tails == NULL)
            return -1;
        r->tails = tails;
        r->cap = cap;
        if (r->n == 0)
            r->voff[0] = 0;
    }
    if (r->vcap - r->vlen < vlen) {
        size_t cap = r->vcap ? r->vcap : 8192;
        while (cap - r->vlen < vlen)
            cap *= 2;
        char *vals = PyMem_Realloc(r->vals, cap);
        if (vals == NULL)
            return -1;
        r->vals = vals;
        r->vcap = cap;
    }
    memcpy(r->vals + r->vlen, value, vlen);
    r->vlen += vlen;
    memcpy(r->tails + 43 * r->n, tail, 43);
    Py_INCREF(m);
    r->ms[r->n++] = m;
    r->voff[r->n] = r->vlen;
    return 0;
}

/* One shard's runs: per source, the first and the last position of the batch's records in that
 * shard, while they strictly increase (the follower's batches); ``broken`` once one does not, and
 * the shard then has no runs (None: index._fast_marks' per-record check would refuse it too). */
typedef struct {
    PyObject *by_src; /* {source: [first, last]} (lists: updated in place, one per source) */
    int broken;
} Runs;

/* Note record ``m``'s (source, position) in its shard's runs: the marks check of
 * index._fast_marks_py folded into the first pass, while the record is in the cache. */
static int run_note(Runs *r, PyObject *m)
{
    if (r->broken)
        return 0;
    PyObject *src = slot(m, F_SOURCE), *pos = slot(m, F_POSITION); /* exact strs: prepare_one checked */
    if (r->by_src == NULL && (r->by_src = PyDict_New()) == NULL)
        return -1;
    PyObject *run = PyDict_GetItemWithError(r->by_src, src); /* borrowed */
    if (run == NULL) {
        if (PyErr_Occurred())
            return -1;
        run = PyList_New(2);
        if (run == NULL)
            return -1;
        Py_INCREF(pos);
        Py_INCREF(pos);
        PyList_SET_ITEM(run, 0, pos);
        PyList_SET_ITEM(run, 1, pos);
        int rc = PyDict_SetItem(r->by_src, src, run);
        Py_DECREF(run);
        return rc;
    }
    PyObject *last = PyList_GET_ITEM(run, 1);
    int c = PyUnicode_Compare(pos, last);
    if (c == -1 && PyErr_Occurred())
        return -1;
    if (c <= 0) { /* a duplicate, or out of order: the general path decides */
        r->broken = 1;
        Py_CLEAR(r->by_src);
        return 0;
    }
    Py_INCREF(pos);
    PyList_SET_ITEM(run, 1, pos);
    Py_DECREF(last);
    return 0;
}

/* {source: (first, last)} of a shard's runs, or None when they are broken. */
static PyObject *runs_done(Runs *r)
{
    if (r->broken || r->by_src == NULL)
        Py_RETURN_NONE;
    PyObject *out = PyDict_New(), *src, *run;
    Py_ssize_t pos = 0;
    while (out && PyDict_Next(r->by_src, &pos, &src, &run)) {
        PyObject *pair = PyTuple_Pack(2, PyList_GET_ITEM(run, 0), PyList_GET_ITEM(run, 1));
        if (pair == NULL || PyDict_SetItem(out, src, pair) < 0)
            Py_CLEAR(out);
        Py_XDECREF(pair);
    }
    return out;
}

/* prepare_records(batch, shards, mutation_type)
 *     -> ({shard: Records of (m, value, tail)}, {shard: {source: (first, last)} | None}) | None */
static PyObject *prepare_records(PyObject *module, PyObject *args)
{
    PyObject *items, *type, *seq, *by_shard = NULL, *lists[4096] = {NULL}, *result = NULL;
    Runs *runs; /* per call: a collection an allocation sets off may run another thread's */
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
    runs = PyMem_Calloc((size_t)shards, sizeof(Runs));
    if (runs == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
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
        /* No object a record: the shard's Records takes the value and the tail into its buffers
         * (16,000 tuples, bytes and strs a batch cost their allocation, and the tuples set off
         * the cyclic GC's passes over every live object, the caller's batches included; issue 17). */
        PyObject *list = lists[shard];
        if (list == NULL) {
            PyObject *key = PyLong_FromLongLong(shard);
            list = (PyObject *)records_new();
            if (key == NULL || list == NULL || PyDict_SetItem(by_shard, key, list) < 0) {
                Py_XDECREF(key);
                Py_XDECREF(list);
                rc = -1;
                break;
            }
            Py_DECREF(key);
            Py_DECREF(list); /* the dict holds it */
            lists[shard] = list;
            runs[shard].by_src = NULL;
            runs[shard].broken = 0;
        }
        rc = records_add((RecordsObject *)list, m, value.buf, value.len, tail);
        if (rc < 0)
            PyErr_NoMemory();
        if (rc == 0)
            rc = run_note(&runs[shard], m);
    }
    Py_DECREF(seq);
    PyMem_RawFree(value.buf);
    PyMem_RawFree(scratch.buf);
    /* The runs, shards in the order of by_shard (first appearance). */
    PyObject *by_runs = rc == 0 && by_shard != NULL ? PyDict_New() : NULL, *key, *list;
    Py_ssize_t at = 0;
    while (by_runs != NULL && PyDict_Next(by_shard, &at, &key, &list)) {
        PyObject *r = runs_done(&runs[PyLong_AsLongLong(key)]);
        if (r == NULL || PyDict_SetItem(by_runs, key, r) < 0)
            Py_CLEAR(by_runs);
        Py_XDECREF(r);
    }
    for (long long s = 0; s < shards; s++)
        if (lists[s] != NULL)
            Py_CLEAR(runs[s].by_src);
    PyMem_Free(runs);
    if (rc == FALLBACK) {
        Py_XDECREF(by_shard);
        Py_RETURN_NONE;
    }
    if (rc == 0 && by_runs != NULL)
        result = PyTuple_Pack(2, by_shard, by_runs);
    if (result == NULL && !PyErr_Occurred())
        PyErr_NoMemory();
    Py_XDECREF(by_shard);
    Py_XDECREF(by_runs);
    return result;
}

/* record_rows(t, pending) -> [key, value, key, value, ...]: the data keys of RecordOp's records
 * (keys.time_bound(t + i) + tail of the i-th (mutation, value, tail)) beside their values, flat,
 * as the sqlite store binds them; None for any other shape (index._data_keys decides). */
static PyObject *record_rows(PyObject *module, PyObject *args)
{
    PyObject *recs;
    unsigned long long t0;
    static const char HEX[] = "0123456789abcdef";
    (void)module;
    if (!PyArg_ParseTuple(args, "KO:record_rows", &t0, &recs))
        return NULL;
    RecordsObject *rb = Py_IS_TYPE(recs, &RecordsType) ? (RecordsObject *)recs : NULL;
    if (rb == NULL && !PyList_CheckExact(recs))
        Py_RETURN_NONE;
    Py_ssize_t n = rb ? rb->n : PyList_GET_SIZE(recs);
    if (n && t0 + (uint64_t)n - 1 < t0) /* past 2**64: keys.time_hex refuses it */
        Py_RETURN_NONE;
    PyObject *out = PyList_New(2 * n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v;
        const char *tail;
        if (rb) {
            v = PyBytes_FromStringAndSize(rb->vals + rb->voff[i], (Py_ssize_t)(rb->voff[i + 1] - rb->voff[i]));
            if (v == NULL) {
                Py_DECREF(out);
                return NULL;
            }
            tail = rb->tails + 43 * i;
        } else {
            PyObject *p = PyList_GET_ITEM(recs, i), *t;
            if (!PyTuple_CheckExact(p) || PyTuple_GET_SIZE(p) != 3 || !PyBytes_CheckExact(v = PyTuple_GET_ITEM(p, 1))
                || !PyUnicode_CheckExact(t = PyTuple_GET_ITEM(p, 2)) || !PyUnicode_IS_ASCII(t)
                || PyUnicode_GET_LENGTH(t) != 43) {
                Py_DECREF(out);
                Py_RETURN_NONE;
            }
            Py_INCREF(v);
            tail = (const char *)PyUnicode_DATA(t);
        }
        PyObject *key = PyUnicode_New(61, 127);
        if (key == NULL) {
            Py_DECREF(v);
            Py_DECREF(out);
            return NULL;
        }
        char *w = (char *)PyUnicode_DATA(key);
        uint64_t t = t0 + (uint64_t)i;
        w[0] = 'd';
        w[1] = '.';
        for (int d = 0; d < 16; d++)
            w[2 + d] = HEX[(t >> (60 - 4 * d)) & 15];
        memcpy(w + 18, tail, 43);
        PyList_SET_ITEM(out, 2 * i, key);
        PyList_SET_ITEM(out, 2 * i + 1, v);
    }
    return out;
}


/* ---- the follower's bilog mapping (rgw_module.mapping.ShardMapper.map_page) -------------------
 *
 * map_bilog_page(entries, start, facts, observed_ns, consts, ops, mutation_type) maps
 * entries[start:] as ShardMapper.map does each one (writer records off), for a shard whose
 * constants (tenant, bucket name, stream name, seq prefix) a record made the checked way has
 * already proved valid. Each result is the Mutation, None (the entry stands for no record: a
 * companion, a pending entry, the internal namespace, an op that is no mutation), or Ellipsis:
 * "Python decides" (any shape not handled here, any value the Mutation's checks could refuse,
 * any time or entry id the fast paths of parse_time_ns / position_of do not take), so every
 * error and its message stays the Python one. ops: (WRITE, DELETE, DELETE_MARKER). */

#define MAP_MAX_KEY 1024 /* mutation.MAX_KEY_BYTES: an ASCII key of at most this many chars */

/* A str-keyed item of a dict entry (borrowed, NULL if absent; -1 with an exception set). */
static int item_of(PyObject *d, PyObject *key, PyObject **out)
{
    *out = PyDict_GetItemWithError(d, key);
    return (*out == NULL && PyErr_Occurred()) ? -1 : 0;
}

static int ascii_digits(const char *s, Py_ssize_t n)
{
    if (n < 1)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

static int two(const char *s) { return (s[0] - '0') * 10 + (s[1] - '0'); }

/* parse_time_ns's common shape ("YYYY-MM-DDTHH:MM:SS", then nothing, "Z" or "." ASCII digits
 * and an optional "Z"), a valid date of years 1970-2262 (ns fit int64). 0 and *ns, or FALLBACK. */
static int time_ns_of(PyObject *text, int64_t *ns)
{
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text))
        return FALLBACK;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    const char *s = (const char *)PyUnicode_1BYTE_DATA(text);
    if (n < 19 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':')
        return FALLBACK;
    if (!ascii_digits(s, 4) || !ascii_digits(s + 5, 2) || !ascii_digits(s + 8, 2) || !ascii_digits(s + 11, 2)
        || !ascii_digits(s + 14, 2) || !ascii_digits(s + 17, 2))
        return FALLBACK;
    int y = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + two(s + 2), mo = two(s + 5), d = two(s + 8);
    int h = two(s + 11), mi = two(s + 14), sec = two(s + 17);
    if (y < 1970 || y > 2261 || mo < 1 || mo > 12 || h > 23 || mi > 59 || sec > 59 || d < 1)
        return FALLBACK;
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d > mdays[mo - 1] + (mo == 2 && leap))
        return FALLBACK;
    /* days from 1970-01-01 (the civil-from-days inverse, proleptic Gregorian) */
    int64_t yy = mo <= 2 ? y - 1 : y;
    int64_t era = yy / 400, yoe = yy - era * 400;
    int64_t doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    int64_t days = era * 146097 + doe - 719468;
    int64_t t = ((days * 24 + h) * 60 + mi) * 60 + sec;
    int64_t frac = 0;
    const char *r = s + 19;
    Py_ssize_t rn = n - 19;
    if (!(rn == 0 || (rn == 1 && r[0] == 'Z'))) {
        Py_ssize_t fn = r[rn - 1] == 'Z' ? rn - 2 : rn - 1;
        if (r[0] != '.' || !ascii_digits(r + 1, fn))
            return FALLBACK;
        for (int i = 0; i < 9; i++)
            frac = frac * 10 + (i < fn ? r[1 + i] - '0' : 0);
    }
    *ns = t * 1000000000LL + frac;
    return 0;
}

/* position_of's fast path: [<anything but '#'>#]<1-20 digits>.<1-20 digits>.<1-10 digits>, the
 * fields zero-padded to 20.20.10. A new str, NULL and FALLBACK, or NULL with an exception. */
static PyObject *position_str(PyObject *op_id, int *rc)
{
    *rc = FALLBACK;
    if (!PyUnicode_CheckExact(op_id) || !PyUnicode_IS_ASCII(op_id))
        return NULL;
    Py_ssize_t n = PyUnicode_GET_LENGTH(op_id);
    const char *s = (const char *)PyUnicode_1BYTE_DATA(op_id);
    const char *hash = memchr(s, '#', (size_t)n);
    if (hash != NULL) {
        n -= hash + 1 - s;
        s = hash + 1;
    }
    static const int widths[3] = {20, 20, 10};
    const char *field[3];
    Py_ssize_t len[3];
    Py_ssize_t at = 0;
    for (int f = 0; f < 3; f++) {
        Py_ssize_t b = at;
        while (at < n && s[at] >= '0' && s[at] <= '9')
            at++;
        field[f] = s + b;
        len[f] = at - b;
        if (len[f] < 1 || len[f] > widths[f])
            return NULL;
        if (f < 2) {
            if (at >= n || s[at] != '.')
                return NULL;
            at++;
        }
    }
    if (at != n)
        return NULL;
    char out[52];
    char *w = out;
    for (int f = 0; f < 3; f++) {
        memset(w, '0', (size_t)(widths[f] - len[f]));
        memcpy(w + widths[f] - len[f], field[f], (size_t)len[f]);
        w += widths[f];
        if (f < 2)
            *w++ = '.';
    }
    *rc = 0;
    PyObject *pos = PyUnicode_FromStringAndSize(out, 52);
    if (pos == NULL)
        *rc = -1;
    return pos;
}

enum { K_STATE, K_OBJECT, K_OP, K_INSTANCE, K_VERSIONED, K_FLAGS, K_TIMESTAMP, K_OP_ID, K_SIZE, K_ETAG,
       K_MTIME, K_CLASS, K_COUNT };
static const char *const MAP_NAMES[K_COUNT] = {
    "state", "object", "op", "instance", "versioned", "bilog_flags", "timestamp", "op_id",
    "size", "etag", "mtime_ns", "storage_class",
};
static PyObject *map_names[K_COUNT];
static PyObject *s_ver, *s_pool, *s_epoch;
static PyObject *s_complete, *s_write, *s_del, *s_link_olh, *s_link_olh_del, *s_unlink, *s_null, *s_standard;

static int map_init(void)
{
    for (int k = 0; k < K_COUNT; k++)
        if ((map_names[k] = PyUnicode_InternFromString(MAP_NAMES[k])) == NULL)
            return -1;
    s_complete = PyUnicode_InternFromString("complete");
    s_write = PyUnicode_InternFromString("write");
    s_del = PyUnicode_InternFromString("del");
    s_link_olh = PyUnicode_InternFromString("link_olh");
    s_link_olh_del = PyUnicode_InternFromString("link_olh_del");
    s_unlink = PyUnicode_InternFromString("unlink_instance");
    s_null = PyUnicode_InternFromString("null");
    s_standard = PyUnicode_InternFromString("STANDARD");
    s_ver = PyUnicode_InternFromString("ver");
    s_pool = PyUnicode_InternFromString("pool");
    s_epoch = PyUnicode_InternFromString("epoch");
    if (!s_ver || !s_pool || !s_epoch)
        return -1;
    return s_complete && s_write && s_del && s_link_olh && s_link_olh_del && s_unlink && s_null && s_standard ? 0 : -1;
}

static int str_eq(PyObject *s, PyObject *lit)
{
    return s == lit || PyUnicode_Compare(s, lit) == 0;
}

/* An exact int in 0..2**64-1: 0, else FALLBACK (the error, if any, cleared). */
static int u64_ok(PyObject *v)
{
    if (!PyLong_CheckExact(v))
        return FALLBACK;
    unsigned long long u = PyLong_AsUnsignedLongLong(v);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return FALLBACK;
    }
    return 0;
}

/* One entry: *out the Mutation (new), Py_None or Py_Ellipsis (new references); -1 on error. */
static int map_one(PyObject *e, PyObject *facts, PyObject *observed, PyObject *const consts[4], PyObject *const ops[3],
                   PyTypeObject *type, PyObject **out)
{
    PyObject *v[K_COUNT] = {NULL};
#define GIVE(o) do { *out = (o); Py_INCREF(*out); return 0; } while (0)
    if (!PyDict_CheckExact(e))
        GIVE(Py_Ellipsis);
    for (int k = 0; k <= K_OP_ID; k++)
        if (item_of(e, map_names[k], &v[k]) < 0)
            return -1;
    /* interpret: state, then the key */
    if (v[K_STATE] != NULL) {
        if (!PyUnicode_CheckExact(v[K_STATE]))
            GIVE(Py_Ellipsis);
        if (!str_eq(v[K_STATE], s_complete))
            GIVE(Py_None);
    }
    PyObject *obj = v[K_OBJECT];
    if (obj == NULL || !PyUnicode_CheckExact(obj) || !PyUnicode_IS_ASCII(obj))
        GIVE(Py_Ellipsis);
    Py_ssize_t klen = PyUnicode_GET_LENGTH(obj);
    const char *k = (const char *)PyUnicode_1BYTE_DATA(obj);
    if (klen == 0)
        GIVE(Py_None);
    if (k[0] == '_')
        GIVE(klen > 1 && k[1] == '_' ? Py_Ellipsis : Py_None); /* "__x" is the key "_x" */
    if (klen > MAP_MAX_KEY)
        GIVE(Py_Ellipsis);
    /* the op, instance, versioned flag and time, in interpret's order */
    PyObject *op = v[K_OP];
    if (op != NULL && !PyUnicode_CheckExact(op))
        GIVE(Py_Ellipsis);
    PyObject *inst = v[K_INSTANCE], *version = Py_None;
    if (inst != NULL && inst != Py_None && inst != Py_False) {
        if (!PyUnicode_CheckExact(inst) || !PyUnicode_IS_ASCII(inst))
            GIVE(Py_Ellipsis);
        if (PyUnicode_GET_LENGTH(inst) > 0 && !str_eq(inst, s_null))
            version = inst;
    }
    int versioned;
    PyObject *ver = v[K_VERSIONED];
    if (ver == Py_True || ver == Py_False) {
        versioned = ver == Py_True;
    } else if (ver != NULL && PyUnicode_Check(ver)) {
        GIVE(Py_Ellipsis);
    } else {
        PyObject *flags = v[K_FLAGS];
        if (flags == NULL || flags == Py_None) {
            versioned = 0;
        } else if (PyLong_CheckExact(flags)) {
            int overflow;
            long long f = PyLong_AsLongLongAndOverflow(flags, &overflow);
            if (overflow || (f == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                GIVE(Py_Ellipsis);
            }
            versioned = (int)(f & 1);
        } else {
            GIVE(Py_Ellipsis);
        }
    }
    int64_t ts;
    /* 0: a time never set, which Python stamps when seen (interpret) */
    if (v[K_TIMESTAMP] == NULL || time_ns_of(v[K_TIMESTAMP], &ts) || ts == 0)
        GIVE(Py_Ellipsis);
    /* which change */
    PyObject *mop;
    int stamped; /* the entry's time is the mutation's */
    if (op == NULL) {
        GIVE(Py_None);
    } else if (str_eq(op, s_write)) {
        if (versioned)
            GIVE(Py_None);
        mop = ops[0];
        stamped = 1;
    } else if (str_eq(op, s_del)) {
        if (versioned)
            GIVE(Py_None);
        mop = ops[1];
        stamped = 0;
    } else if (str_eq(op, s_link_olh)) {
        mop = ops[0];
        stamped = 1;
    } else if (str_eq(op, s_link_olh_del)) {
        mop = ops[2];
        stamped = 1;
    } else if (str_eq(op, s_unlink)) {
        mop = ops[1];
        stamped = 0;
    } else {
        GIVE(Py_None);
    }
    if (stamped && ts < 0)
        GIVE(Py_Ellipsis);
    if (v[K_OP_ID] == NULL)
        GIVE(Py_Ellipsis);
    int rc;
    PyObject *position = position_str(v[K_OP_ID], &rc);
    if (position == NULL) {
        if (rc < 0)
            return -1;
        GIVE(Py_Ellipsis);
    }
    /* Held while the facts are read (an attribute read could run code that changes the entry). */
    Py_INCREF(obj);
    Py_INCREF(version);
    PyObject *fact = NULL, *size = Py_None, *etag = Py_None, *fmtime = Py_None, *sclass = Py_None;
    PyObject *held[4] = {NULL};
    if (facts != NULL && mop == ops[0]) {
        fact = PyDict_GetItemWithError(facts, position);
        if (fact == NULL && PyErr_Occurred())
            goto error;
        Py_XINCREF(fact);
    }
    if (fact != NULL) {
        for (int i = 0; i < 4; i++)
            if ((held[i] = PyObject_GetAttr(fact, map_names[K_SIZE + i])) == NULL) {
                PyErr_Clear();
                goto python;
            }
        size = held[0], etag = held[1], fmtime = held[2], sclass = held[3];
        if (u64_ok(size) || !PyUnicode_Check(etag) || u64_ok(fmtime))
            goto python;
        if (sclass == Py_None || (PyUnicode_CheckExact(sclass) && PyUnicode_GET_LENGTH(sclass) == 0))
            sclass = s_standard;
        else if (!PyUnicode_CheckExact(sclass))
            goto python;
    }
    PyObject *mtime = stamped ? PyLong_FromLongLong(ts) : (Py_INCREF(observed), observed);
    PyObject *seq = mtime ? PyUnicode_Concat(consts[3], position) : NULL;
    PyObject *meta = seq ? PyDict_New() : NULL;
    PyObject *m = meta ? type->tp_alloc(type, 0) : NULL;
    if (m == NULL) {
        Py_XDECREF(mtime);
        Py_XDECREF(seq);
        Py_XDECREF(meta);
        goto error;
    }
    PyObject *fields[F_COUNT];
    fields[F_BUCKET] = consts[1];
    fields[F_KEY] = obj;
    fields[F_OP] = mop;
    fields[F_SOURCE] = consts[2];
    fields[F_POSITION] = position;
    fields[F_VERSION] = version;
    fields[F_SIZE] = size;
    fields[F_ETAG] = etag;
    fields[F_BASELINE] = Py_False;
    fields[F_TENANT] = consts[0];
    fields[F_OBJ_MTIME] = fmtime;
    fields[F_STORAGE_CLASS] = sclass;
    for (int f = 0; f < F_COUNT; f++) {
        if (f == F_MTIME || f == F_SEQ || f == F_METADATA)
            continue;
        Py_INCREF(fields[f]);
        *(PyObject **)((char *)m + slot_offset[f]) = fields[f];
    }
    /* the three made here: their references move into the record */
    *(PyObject **)((char *)m + slot_offset[F_MTIME]) = mtime;
    *(PyObject **)((char *)m + slot_offset[F_SEQ]) = seq;
    *(PyObject **)((char *)m + slot_offset[F_METADATA]) = meta;
    for (int i = 0; i < 4; i++)
        Py_XDECREF(held[i]);
    Py_XDECREF(fact);
    Py_DECREF(obj);
    Py_DECREF(version);
    Py_DECREF(position);
    *out = m;
    return 0;
python:
    for (int i = 0; i < 4; i++)
        Py_XDECREF(held[i]);
    Py_XDECREF(fact);
    Py_DECREF(obj);
    Py_DECREF(version);
    Py_DECREF(position);
    GIVE(Py_Ellipsis);
error:
    for (int i = 0; i < 4; i++)
        Py_XDECREF(held[i]);
    Py_XDECREF(fact);
    Py_DECREF(obj);
    Py_DECREF(version);
    Py_DECREF(position);
    return -1;
#undef GIVE
}

/* map_bilog_page(entries, start, facts, observed_ns, consts, ops, mutation_type) -> list | None */
static PyObject *map_bilog_page(PyObject *module, PyObject *args)
{
    PyObject *entries, *facts, *observed, *consts, *ops, *type;
    Py_ssize_t start;
    (void)module;
    if (!PyArg_ParseTuple(args, "O!nOO!O!O!O!:map_bilog_page", &PyList_Type, &entries, &start, &facts,
                          &PyLong_Type, &observed, &PyTuple_Type, &consts, &PyTuple_Type, &ops, &PyType_Type,
                          &type))
        return NULL;
    if (PyTuple_GET_SIZE(consts) != 4 || PyTuple_GET_SIZE(ops) != 3 || start < 0)
        Py_RETURN_NONE;
    for (int i = 0; i < 4; i++)
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(consts, i)))
            Py_RETURN_NONE;
    if (facts != Py_None && !PyDict_CheckExact(facts))
        Py_RETURN_NONE;
    if (!PyLong_CheckExact(observed) || u64_ok(observed) || slots_of((PyTypeObject *)type))
        Py_RETURN_NONE;
    PyObject *const cs[4] = {PyTuple_GET_ITEM(consts, 0), PyTuple_GET_ITEM(consts, 1), PyTuple_GET_ITEM(consts, 2),
                             PyTuple_GET_ITEM(consts, 3)};
    PyObject *const os[3] = {PyTuple_GET_ITEM(ops, 0), PyTuple_GET_ITEM(ops, 1), PyTuple_GET_ITEM(ops, 2)};
    PyObject *f = facts == Py_None || PyDict_GET_SIZE(facts) == 0 ? NULL : facts;
    Py_ssize_t n = PyList_GET_SIZE(entries);
    PyObject *out = PyList_New(n > start ? n - start : 0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = start; i < n; i++) {
        PyObject *got, *e;
        if (PyList_GET_SIZE(entries) != n) { /* changed under us (code run by a facts read) */
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        e = PyList_GET_ITEM(entries, i);
        Py_INCREF(e);
        int rc = map_one(e, f, observed, cs, os, (PyTypeObject *)type, &got);
        Py_DECREF(e);
        if (rc < 0) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i - start, got);
    }
    return out;
}

/* ---- bucket index entries (rgw_module.bucket_index._fast_dir_entry) ---------------------------
 *
 * dir_entry(data) -> tuple | None: _fast_dir_entry's one pass over a well-formed
 * rgw_bucket_dir_entry (struct v3 or later, no pending operations), as the tuple of DirEntry's
 * fields in order; None wherever that pass gives None or raises (every read here is
 * bounds-checked against the whole value, the strings are decoded by Python's strict UTF-8
 * decoder), and the careful reader then decides. Ellipsis for an argument that is not bytes. */

typedef struct {
    const uint8_t *d;
    Py_ssize_t n;
} Buf;

static int b_u8(const Buf *b, Py_ssize_t pos, uint64_t *out)
{
    if (pos < 0 || pos + 1 > b->n)
        return -1;
    *out = b->d[pos];
    return 0;
}

static int b_le(const Buf *b, Py_ssize_t pos, int width, uint64_t *out)
{
    if (pos < 0 || pos + width > b->n)
        return -1;
    uint64_t v = 0;
    for (int i = width - 1; i >= 0; i--)
        v = (v << 8) | b->d[pos + i];
    *out = v;
    return 0;
}

/* A u32-length-prefixed string at *pos: its bytes' start and length; *pos moves past it. */
static int b_str(const Buf *b, Py_ssize_t *pos, Py_ssize_t *start, Py_ssize_t *len)
{
    uint64_t n;
    if (b_le(b, *pos, 4, &n) < 0 || *pos + 4 + (Py_ssize_t)n > b->n)
        return -1;
    *start = *pos + 4;
    *len = (Py_ssize_t)n;
    *pos += 4 + (Py_ssize_t)n;
    return 0;
}

static int b_packed(const Buf *b, Py_ssize_t *pos, uint64_t *out)
{
    uint64_t c;
    if (b_u8(b, *pos, &c) < 0)
        return -1;
    if (c < 0x80) {
        *out = c;
        *pos += 1;
        return 0;
    }
    int width = (int)(c & 0x7F);
    if ((width != 1 && width != 2 && width != 4 && width != 8) || b_le(b, *pos + 1, width, out) < 0)
        return -1;
    *pos += 1 + width;
    return 0;
}

static PyObject *utf8_str(const Buf *b, Py_ssize_t start, Py_ssize_t len)
{
    PyObject *s = PyUnicode_DecodeUTF8((const char *)b->d + start, len, "strict");
    if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        PyErr_Clear(); /* not UTF-8: the careful reader says so */
    return s;
}

static PyObject *dir_entry(PyObject *module, PyObject *arg)
{
    (void)module;
    if (!PyBytes_CheckExact(arg))
        return Py_INCREF(Py_Ellipsis), Py_Ellipsis;
    Buf b = {(const uint8_t *)PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg)};
    uint64_t v, length, mv, mlen, size, sec, nsec, accounted, t, pool = (uint64_t)-1, epoch = 0, index_ver = 0;
    uint64_t flags = 0, versioned_epoch = 0, exists;
    Py_ssize_t name_at, name_len, etag_at, etag_len, owner_at, owner_len, sc_at = 0, sc_len = 0, inst_at = 0,
               inst_len = 0, s0, s1;
    if (b_u8(&b, 0, &v) < 0 || b_le(&b, 2, 4, &length) < 0)
        Py_RETURN_NONE;
    Py_ssize_t end = 6 + (Py_ssize_t)length;
    if (v < 3 || end > b.n)
        Py_RETURN_NONE;
    Py_ssize_t pos = 6;
    if (b_str(&b, &pos, &name_at, &name_len) < 0 || b_u8(&b, pos + 8, &exists) < 0)
        Py_RETURN_NONE;
    /* rgw_bucket_dir_entry_meta */
    if (b_u8(&b, pos + 9, &mv) < 0 || b_le(&b, pos + 11, 4, &mlen) < 0)
        Py_RETURN_NONE;
    pos += 15;
    Py_ssize_t mend = pos + (Py_ssize_t)mlen;
    if (mv < 1 || mend > end)
        Py_RETURN_NONE;
    if (b_le(&b, pos + 1, 8, &size) < 0 || b_le(&b, pos + 9, 4, &sec) < 0 || b_le(&b, pos + 13, 4, &nsec) < 0)
        Py_RETURN_NONE;
    pos += 17;
    if (b_str(&b, &pos, &etag_at, &etag_len) < 0 || b_str(&b, &pos, &owner_at, &owner_len) < 0
        || b_str(&b, &pos, &s0, &s1) < 0) /* owner_display_name */
        Py_RETURN_NONE;
    if (mv >= 2 && b_str(&b, &pos, &s0, &s1) < 0) /* content_type */
        Py_RETURN_NONE;
    accounted = size;
    if (mv >= 4) {
        if (b_le(&b, pos, 8, &accounted) < 0)
            Py_RETURN_NONE;
        pos += 8;
    }
    if (mv >= 5 && b_str(&b, &pos, &s0, &s1) < 0) /* user_data */
        Py_RETURN_NONE;
    if (mv >= 6 && b_str(&b, &pos, &sc_at, &sc_len) < 0)
        Py_RETURN_NONE;
    if (pos > mend)
        Py_RETURN_NONE;
    pos = mend;
    if (b_le(&b, pos, 4, &t) < 0 || t != 0) /* pending operations: the careful reader */
        Py_RETURN_NONE;
    pos += 4;
    if (b_str(&b, &pos, &s0, &s1) < 0) /* locator (v >= 2: always, v >= 3 here) */
        Py_RETURN_NONE;
    if (v >= 4) {
        uint64_t ev, elen;
        if (b_u8(&b, pos, &ev) < 0 || b_le(&b, pos + 2, 4, &elen) < 0)
            Py_RETURN_NONE;
        pos += 6;
        Py_ssize_t vend = pos + (Py_ssize_t)elen;
        if (ev < 1 || vend > end || b_packed(&b, &pos, &pool) < 0 || b_packed(&b, &pos, &epoch) < 0 || pos > vend)
            Py_RETURN_NONE;
        pos = vend;
    }
    if (v >= 5 && (b_packed(&b, &pos, &index_ver) < 0 || b_str(&b, &pos, &s0, &s1) < 0)) /* tag */
        Py_RETURN_NONE;
    if (v >= 6 && b_str(&b, &pos, &inst_at, &inst_len) < 0)
        Py_RETURN_NONE;
    if (v >= 7) {
        if (b_le(&b, pos, 2, &flags) < 0)
            Py_RETURN_NONE;
        pos += 2;
    }
    if (v >= 8) {
        if (b_le(&b, pos, 8, &versioned_epoch) < 0)
            Py_RETURN_NONE;
        pos += 8;
    }
    if (pos > end)
        Py_RETURN_NONE;
    PyObject *f[15] = {NULL};
    f[0] = utf8_str(&b, name_at, name_len);
    f[1] = v >= 6 ? utf8_str(&b, inst_at, inst_len) : PyUnicode_FromStringAndSize("", 0);
    f[2] = PyBool_FromLong(exists != 0);
    f[3] = PyLong_FromLongLong((long long)pool); /* int64: -1 is "no pool" */
    f[4] = PyLong_FromUnsignedLongLong(epoch);
    f[5] = PyLong_FromUnsignedLongLong(index_ver);
    f[6] = PyLong_FromUnsignedLongLong(size);
    f[7] = PyLong_FromUnsignedLongLong(sec * 1000000000ULL + nsec);
    f[8] = utf8_str(&b, etag_at, etag_len);
    if (sc_len == 0) {
        f[9] = Py_None;
        Py_INCREF(Py_None);
    } else {
        f[9] = utf8_str(&b, sc_at, sc_len);
    }
    f[10] = PyLong_FromUnsignedLongLong(accounted);
    f[11] = PyLong_FromUnsignedLongLong(flags);
    f[12] = PyLong_FromUnsignedLongLong(versioned_epoch);
    f[13] = PyLong_FromUnsignedLongLong(v);
    f[14] = utf8_str(&b, owner_at, owner_len);
    PyObject *out = PyTuple_New(15);
    for (int i = 0; i < 15; i++) {
        if (f[i] == NULL) {
            for (int j = 0; j < 15; j++)
                Py_XDECREF(f[j]);
            Py_XDECREF(out);
            if (PyErr_Occurred())
                return NULL;
            Py_RETURN_NONE;
        }
    }
    if (out == NULL) {
        for (int j = 0; j < 15; j++)
            Py_DECREF(f[j]);
        return NULL;
    }
    for (int i = 0; i < 15; i++)
        PyTuple_SET_ITEM(out, i, f[i]);
    return out;
}

/* ---- bucket index lookups (rgw_module.bucket_index.lookups) ------------------------------------
 *
 * index_lookups(page, lookup_type, instance_prefix) -> list | None: bucket_index.lookups(page),
 * each Lookup made as the named tuple ``lookup_type`` of (position, keys, pool, epoch, mtime_ns);
 * None for a page with any shape only the Python code handles (a str subclass, a ver field that
 * is not a plain int, an entry id or time off the fast paths, a name UTF-8 cannot encode): the
 * Python code then does the whole page, errors included. */


/* The ver of an entry (_ver): 0 and *has=1 with the values, *has=0 for none; FALLBACK. */
static int ver_of(PyObject *e, int *has, long long *pool, long long *epoch)
{
    PyObject *ver = PyDict_GetItemWithError(e, s_ver);
    *has = 0;
    if (ver == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyDict_Check(ver))
        return 0;
    if (!PyDict_CheckExact(ver))
        return FALLBACK;
    PyObject *p = PyDict_GetItemWithError(ver, s_pool), *q = p || !PyErr_Occurred() ? PyDict_GetItemWithError(ver, s_epoch) : NULL;
    if (PyErr_Occurred())
        return -1;
    int overflow = 0;
    *pool = -1;
    *epoch = 0;
    if (p != NULL) {
        if (!PyLong_CheckExact(p))
            return FALLBACK;
        *pool = PyLong_AsLongLongAndOverflow(p, &overflow);
        if (overflow || (*pool == -1 && PyErr_Occurred()))
            return PyErr_Clear(), FALLBACK;
    }
    if (q != NULL) {
        if (!PyLong_CheckExact(q))
            return FALLBACK;
        *epoch = PyLong_AsLongLongAndOverflow(q, &overflow);
        if (overflow || (*epoch == -1 && PyErr_Occurred()))
            return PyErr_Clear(), FALLBACK;
    }
    *has = 1;
    return 0;
}

/* is_versioned_op: 0/1, or FALLBACK. */
static int versioned_of(PyObject *e)
{
    PyObject *ver = PyDict_GetItemWithError(e, map_names[K_VERSIONED]);
    if (ver == NULL && PyErr_Occurred())
        return -1;
    if (ver == Py_True)
        return 1;
    if (ver == Py_False)
        return 0;
    if (ver != NULL && PyUnicode_Check(ver))
        return FALLBACK;
    PyObject *flags = PyDict_GetItemWithError(e, map_names[K_FLAGS]);
    if (flags == NULL && PyErr_Occurred())
        return -1;
    if (flags == NULL || flags == Py_None)
        return 0;
    if (!PyLong_CheckExact(flags))
        return FALLBACK;
    int overflow;
    long long f = PyLong_AsLongLongAndOverflow(flags, &overflow);
    if (overflow || (f == -1 && PyErr_Occurred()))
        return PyErr_Clear(), FALLBACK;
    return (int)(f & 1);
}

static PyObject *key_bytes(PyObject *prefix, PyObject *name, PyObject *inst)
{
    Py_ssize_t pn, nn, in;
    const char *p = PyBytes_AS_STRING(prefix), *n, *i;
    pn = PyBytes_GET_SIZE(prefix);
    if ((n = PyUnicode_AsUTF8AndSize(name, &nn)) == NULL || (i = PyUnicode_AsUTF8AndSize(inst, &in)) == NULL)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, pn + nn + 2 + in);
    if (out == NULL)
        return NULL;
    char *w = PyBytes_AS_STRING(out);
    memcpy(w, p, (size_t)pn);
    memcpy(w + pn, n, (size_t)nn);
    memcpy(w + pn + nn, "\0i", 2);
    memcpy(w + pn + nn + 2, i, (size_t)in);
    return out;
}

static PyObject *plain_bytes(PyObject *name)
{
    Py_ssize_t nn;
    const char *n = PyUnicode_AsUTF8AndSize(name, &nn);
    return n == NULL ? NULL : PyBytes_FromStringAndSize(n, nn);
}

static PyObject *new_lookup(PyTypeObject *type, PyObject *position, PyObject *keys, long long pool, long long epoch,
                            PyObject *mtime)
{
    PyObject *t = type->tp_alloc(type, 5);
    PyObject *a = PyLong_FromLongLong(pool), *b = PyLong_FromLongLong(epoch);
    if (t == NULL || a == NULL || b == NULL) {
        Py_XDECREF(t);
        Py_XDECREF(a);
        Py_XDECREF(b);
        Py_XDECREF(mtime);
        Py_DECREF(keys);
        return NULL;
    }
    Py_INCREF(position);
    PyTuple_SET_ITEM(t, 0, position);
    PyTuple_SET_ITEM(t, 1, keys);
    PyTuple_SET_ITEM(t, 2, a);
    PyTuple_SET_ITEM(t, 3, b);
    if (mtime == NULL) {
        Py_INCREF(Py_None);
        mtime = Py_None;
    }
    PyTuple_SET_ITEM(t, 4, mtime);
    return t;
}

/* One entry into ``out`` (and ``companions``): 0, FALLBACK or -1. */
static int lookup_one(PyObject *e, PyTypeObject *type, PyObject *iprefix, PyObject *companions, PyObject *out)
{
    PyObject *v[K_COUNT] = {NULL};
    if (!PyDict_CheckExact(e))
        return FALLBACK;
    for (int k = 0; k <= K_OP_ID; k++)
        if (item_of(e, map_names[k], &v[k]) < 0)
            return -1;
    PyObject *op = v[K_OP];
    if (op == NULL || !PyUnicode_Check(op))
        return 0; /* neither "write" nor "link_olh" */
    if (!PyUnicode_CheckExact(op))
        return FALLBACK;
    int is_write = str_eq(op, s_write);
    if (!is_write && !str_eq(op, s_link_olh))
        return 0;
    if (v[K_STATE] != NULL) {
        if (!PyUnicode_CheckExact(v[K_STATE]))
            return FALLBACK;
        if (!str_eq(v[K_STATE], s_complete))
            return 0;
    }
    PyObject *obj = v[K_OBJECT], *inst = v[K_INSTANCE];
    if (obj == NULL || !PyUnicode_CheckExact(obj))
        return FALLBACK;
    if (inst == NULL || inst == Py_None || inst == Py_False)
        inst = PyTuple_GET_ITEM(iprefix, 1); /* "" */
    else if (!PyUnicode_CheckExact(inst))
        return FALLBACK;
    int has;
    long long pool = -1, epoch = 0;
    int rc = ver_of(e, &has, &pool, &epoch);
    if (rc)
        return rc;
    if (is_write) {
        int versioned = versioned_of(e);
        if (versioned < 0 || versioned == FALLBACK)
            return versioned;
        if (versioned) {
            if (has) {
                PyObject *key = PyTuple_Pack(2, obj, inst), *val = Py_BuildValue("(LL)", pool, epoch);
                rc = key && val ? PyDict_SetItem(companions, key, val) : -1;
                Py_XDECREF(key);
                Py_XDECREF(val);
                return rc;
            }
            return 0;
        }
    }
    Py_ssize_t olen = PyUnicode_GET_LENGTH(obj);
    if (olen == 0)
        return 0;
    if (PyUnicode_READ_CHAR(obj, 0) == '_' && !(olen > 1 && PyUnicode_READ_CHAR(obj, 1) == '_'))
        return 0; /* the internal namespace */
    if (v[K_OP_ID] == NULL)
        return FALLBACK;
    PyObject *position = position_str(v[K_OP_ID], &rc);
    if (position == NULL)
        return rc;
    PyObject *prefix = PyTuple_GET_ITEM(iprefix, 0), *lookup = NULL, *keys = NULL;
    if (is_write) {
        if (!has) {
            Py_DECREF(position);
            return 0;
        }
        PyObject *k1, *k2 = NULL;
        if (PyUnicode_GET_LENGTH(inst) > 0) {
            k1 = key_bytes(prefix, obj, inst);
            keys = k1 ? PyTuple_Pack(1, k1) : NULL;
        } else {
            k1 = plain_bytes(obj);
            k2 = k1 ? key_bytes(prefix, obj, inst) : NULL;
            keys = k2 ? PyTuple_Pack(2, k1, k2) : NULL;
        }
        Py_XDECREF(k1);
        Py_XDECREF(k2);
        lookup = keys ? new_lookup(type, position, keys, pool, epoch, NULL) : NULL;
    } else {
        PyObject *ck = PyTuple_Pack(2, obj, inst);
        PyObject *companion = ck ? PyDict_GetItemWithError(companions, ck) : NULL;
        Py_XDECREF(ck);
        if (companion == NULL && PyErr_Occurred())
            goto failed;
        int64_t ts = 0;
        if (companion == NULL) {
            if (v[K_TIMESTAMP] == NULL || time_ns_of(v[K_TIMESTAMP], &ts)) {
                Py_DECREF(position);
                return FALLBACK;
            }
            if (ts == 0) {
                Py_DECREF(position);
                return 0;
            }
        }
        PyObject *k1 = key_bytes(prefix, obj, inst);
        keys = k1 ? PyTuple_Pack(1, k1) : NULL;
        Py_XDECREF(k1);
        if (keys != NULL) {
            if (companion != NULL)
                lookup = new_lookup(type, position, keys, PyLong_AsLongLong(PyTuple_GET_ITEM(companion, 0)),
                                    PyLong_AsLongLong(PyTuple_GET_ITEM(companion, 1)), NULL);
            else
                lookup = new_lookup(type, position, keys, -1, 0, PyLong_FromLongLong(ts));
        }
    }
    if (lookup == NULL)
        goto failed;
    Py_DECREF(position);
    rc = PyList_Append(out, lookup);
    Py_DECREF(lookup);
    return rc;
failed:
    Py_DECREF(position);
    if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) { /* a lone surrogate: Python raises it */
        PyErr_Clear();
        return FALLBACK;
    }
    return -1;
}

/* index_lookups(page, lookup_type, (instance_prefix, "")) -> list | None */
static PyObject *index_lookups(PyObject *module, PyObject *args)
{
    PyObject *page, *type, *iprefix;
    (void)module;
    if (!PyArg_ParseTuple(args, "O!O!O!:index_lookups", &PyList_Type, &page, &PyType_Type, &type, &PyTuple_Type,
                          &iprefix))
        return NULL;
    if (PyTuple_GET_SIZE(iprefix) != 2 || !PyBytes_CheckExact(PyTuple_GET_ITEM(iprefix, 0))
        || !PyUnicode_CheckExact(PyTuple_GET_ITEM(iprefix, 1)) || PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(iprefix, 1))
        || !PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type) || ((PyTypeObject *)type)->tp_itemsize != sizeof(PyObject *))
        Py_RETURN_NONE;
    PyObject *out = PyList_New(0), *companions = PyDict_New();
    int rc = out && companions ? 0 : -1;
    Py_ssize_t n = PyList_GET_SIZE(page);
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
        if (PyList_GET_SIZE(page) != n) {
            rc = FALLBACK;
            break;
        }
        PyObject *e = PyList_GET_ITEM(page, i);
        Py_INCREF(e);
        rc = lookup_one(e, (PyTypeObject *)type, iprefix, companions, out);
        Py_DECREF(e);
    }
    Py_XDECREF(companions);
    if (rc) {
        Py_XDECREF(out);
        if (rc < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    return out;
}

/* ---------------------------------------------------------------------------------------------
 * A bucket index read: OmapReader.get's read op in one call. librados is reached through the
 * addresses of its C functions, which the caller (ctypes) looked up, so this module needs no
 * librados at build time; the prototypes are librados' own (librados.h, Nautilus and later).
 */
typedef void *(*create_read_op_fn)(void);
typedef void (*release_read_op_fn)(void *);
typedef void (*get_vals_by_keys2_fn)(void *, char const *const *, size_t, const size_t *, void **, int *);
typedef int (*read_op_operate_fn)(void *, void *, const char *, int);
typedef int (*omap_get_next2_fn)(void *, char **, char **, size_t *, size_t *);
typedef void (*omap_get_end_fn)(void *);

static PyObject *omap_get_keys(PyObject *module, PyObject *args)
{
    unsigned long long f_create, f_release, f_by_keys, f_operate, f_next, f_end, ioctx;
    const char *oid;
    PyObject *keys;
    (void)module;
    if (!PyArg_ParseTuple(args, "(KKKKKK)KyO!:omap_get_keys", &f_create, &f_release, &f_by_keys, &f_operate,
                          &f_next, &f_end, &ioctx, &oid, &PyList_Type, &keys))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(keys);
    const char **kp = PyMem_Malloc(sizeof(char *) * (size_t)(n ? n : 1));
    size_t *kl = PyMem_Malloc(sizeof(size_t) * (size_t)(n ? n : 1));
    if (!kp || !kl) {
        PyMem_Free(kp);
        PyMem_Free(kl);
        return PyErr_NoMemory();
    }
    /* The keys stay alive (the list holds them, and we hold the list) while librados reads them:
     * it copies them when the op is built. */
    Py_INCREF(keys);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PyList_GET_ITEM(keys, i);
        if (!PyBytes_CheckExact(k)) {
            PyMem_Free(kp);
            PyMem_Free(kl);
            Py_DECREF(keys);
            PyErr_SetString(PyExc_TypeError, "omap_get_keys: keys must be bytes");
            return NULL;
        }
        kp[i] = PyBytes_AS_STRING(k);
        kl[i] = (size_t)PyBytes_GET_SIZE(k);
    }
    void *op = ((create_read_op_fn)(uintptr_t)f_create)();
    void *it = NULL;
    int rval = 0, ret;
    if (!op) {
        PyMem_Free(kp);
        PyMem_Free(kl);
        Py_DECREF(keys);
        return PyErr_NoMemory();
    }
    ((get_vals_by_keys2_fn)(uintptr_t)f_by_keys)(op, kp, (size_t)n, kl, &it, &rval);
    Py_DECREF(keys);
    PyMem_Free(kp);
    PyMem_Free(kl);
    Py_BEGIN_ALLOW_THREADS
    ret = ((read_op_operate_fn)(uintptr_t)f_operate)(op, (void *)(uintptr_t)ioctx, oid, 0);
    Py_END_ALLOW_THREADS
    PyObject *out = NULL;
    if (ret >= 0 && rval >= 0) {
        out = PyDict_New();
        while (out) {
            char *k = NULL, *v = NULL;
            size_t klen = 0, vlen = 0;
            int r = ((omap_get_next2_fn)(uintptr_t)f_next)(it, &k, &v, &klen, &vlen);
            if (r < 0) {
                Py_CLEAR(out);
                ret = r;
                break;
            }
            if (!k)
                break;
            PyObject *key = PyBytes_FromStringAndSize(k, (Py_ssize_t)klen);
            PyObject *val = PyBytes_FromStringAndSize(v ? v : "", v ? (Py_ssize_t)vlen : 0);
            if (!key || !val || PyDict_SetItem(out, key, val) < 0)
                Py_CLEAR(out);
            Py_XDECREF(key);
            Py_XDECREF(val);
        }
    }
    if (it)
        ((omap_get_end_fn)(uintptr_t)f_end)(it);
    ((release_read_op_fn)(uintptr_t)f_release)(op);
    if (!out && PyErr_Occurred())
        return NULL;
    if (!out) {
        out = Py_None;
        Py_INCREF(out);
    }
    return Py_BuildValue("iiN", ret, rval, out);
}

/* fast_marks(pending, streams, shard, mutation_type) -> (old, high) | None is
 * changelog.pipeline.index._fast_marks: the fast path's check that every record of a shard's
 * batch is new above its source's cached mark and in order, without making its key (the key is
 * made when the op is sent, write_op_send's records). None: "not the fast path" (a stream not
 * cached, a replay, a duplicate, out of order) or a shape only Python handles. */
static PyObject *fast_marks(PyObject *module, PyObject *args)
{
    PyObject *pending, *streams, *type, *shard;
    (void)module;
    if (!PyArg_ParseTuple(args, "O!O!OO!:fast_marks", &PyList_Type, &pending, &PyDict_Type, &streams, &shard,
                          &PyType_Type, &type))
        return NULL;
    if (!PyLong_CheckExact(shard) || slots_of((PyTypeObject *)type))
        Py_RETURN_NONE;
    PyObject *old = PyDict_New(), *high = PyDict_New();
    int rc = old && high ? 0 : -1;
    Py_ssize_t n = PyList_GET_SIZE(pending);
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
        PyObject *p = PyList_GET_ITEM(pending, i);
        if (!PyTuple_CheckExact(p) || PyTuple_GET_SIZE(p) != 3 || Py_TYPE(PyTuple_GET_ITEM(p, 0)) != (PyTypeObject *)type) {
            rc = FALLBACK;
            break;
        }
        PyObject *m = PyTuple_GET_ITEM(p, 0);
        PyObject *src = slot(m, F_SOURCE), *pos = slot(m, F_POSITION);
        if (!src || !pos || !PyUnicode_CheckExact(src) || !PyUnicode_CheckExact(pos)) {
            rc = FALLBACK;
            break;
        }
        PyObject *top = PyDict_GetItemWithError(high, src); /* borrowed */
        if (!top && PyErr_Occurred()) {
            rc = -1;
            break;
        }
        if (!top) {
            PyObject *k = PyTuple_Pack(2, shard, src);
            PyObject *mark = k ? PyDict_GetItemWithError(streams, k) : NULL; /* borrowed */
            Py_XDECREF(k);
            if (!mark) {
                rc = PyErr_Occurred() ? -1 : FALLBACK; /* not cached */
                break;
            }
            if (mark != Py_None) {
                if (!PyUnicode_CheckExact(mark)) {
                    rc = FALLBACK;
                    break;
                }
                if (PyUnicode_Compare(pos, mark) <= 0) {
                    rc = PyErr_Occurred() ? -1 : FALLBACK; /* recorded before */
                    break;
                }
            }
            if (PyDict_SetItem(old, src, mark) < 0) {
                rc = -1;
                break;
            }
        } else if (PyUnicode_Compare(pos, top) <= 0) {
            rc = PyErr_Occurred() ? -1 : FALLBACK; /* a duplicate, or out of order */
            break;
        }
        if (PyDict_SetItem(high, src, pos) < 0)
            rc = -1;
    }
    if (rc) {
        Py_XDECREF(old);
        Py_XDECREF(high);
        if (rc < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    return Py_BuildValue("NN", old, high);
}

/* ---------------------------------------------------------------------------------------------
 * The RADOS store's write op (RadosStore.execute_many: the record path's guarded op, issue 17):
 * built and sent in one call through librados' functions at addresses ctypes looked up (as
 * omap_get_keys), so the op's keys and values go from the WriteOp's str and bytes straight into
 * librados without the binding's per-key conversions. The parts are added in the order
 * RadosStore._build adds them, with the same librados calls and the same bytes: the create (or
 * the must_exist compare of the empty key), the cls_lock assert_locked fence, the omap compares
 * (the value's UTF-8 bytes, which is what the binding sends after _cmp_value's padding), the
 * removals, the ranges, then the set. Anything but the plain shapes (a str subclass, a value not
 * bytes, a string that is not valid UTF-8) returns None and the Python path builds that op.
 */
typedef void *(*create_write_op_fn)(void);
typedef void (*release_write_op_fn)(void *);
typedef void (*write_op_create_fn)(void *, int, const char *);
typedef void (*write_op_exec_fn)(void *, const char *, const char *, const char *, size_t, int *);
typedef void (*write_op_omap_cmp_fn)(void *, const char *, uint8_t, const char *, size_t, int *);
typedef void (*write_op_omap_rm_keys_fn)(void *, char const *const *, size_t);
typedef void (*write_op_omap_rm_range2_fn)(void *, const char *, size_t, const char *, size_t);
typedef void (*write_op_omap_set_fn)(void *, char const *const *, char const *const *, const size_t *, size_t);
typedef int (*aio_create_completion2_fn)(void *, void (*)(void *, void *), void **);
typedef int (*aio_write_op_operate_fn)(void *, void *, void *, const char *, time_t *, int);
typedef int (*aio_wait_for_complete_fn)(void *);
typedef int (*aio_get_return_value_fn)(void *);
typedef void (*aio_release_fn)(void *);

enum { W_CREATE_OP, W_RELEASE_OP, W_CREATE, W_EXEC, W_CMP, W_RM_KEYS, W_RM_RANGE2, W_SET, W_COMPLETION,
       W_OPERATE, W_WAIT, W_RETURN, W_RELEASE, W_COUNT };

typedef struct {
    void *fn[W_COUNT];
} WriteFns;

static int write_fns_of(PyObject *t, WriteFns *f)
{
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != W_COUNT) {
        PyErr_SetString(PyExc_TypeError, "write op: functions must be a tuple of 13 addresses");
        return -1;
    }
    for (Py_ssize_t i = 0; i < W_COUNT; i++) {
        unsigned long long a = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(t, i));
        if (a == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        if (!a) {
            PyErr_SetString(PyExc_ValueError, "write op: a librados function address is 0");
            return -1;
        }
        f->fn[i] = (void *)(uintptr_t)a;
    }
    return 0;
}

/* A sent op's completion, held by a capsule until write_op_wait releases it (or the capsule
 * goes: librados keeps its own reference while the op is in flight, so releasing ours early
 * is safe). */
typedef struct {
    void *completion;
    aio_release_fn release;
} Pending;

static const char PENDING_NAME[] = "changelog._speedups.pending_write";

static void pending_free(PyObject *capsule)
{
    Pending *p = PyCapsule_GetPointer(capsule, PENDING_NAME);
    if (p) {
        if (p->completion)
            p->release(p->completion);
        PyMem_Free(p);
    }
}

/* The UTF-8 of an exact str (NULL with no exception: not the plain shape). */
static const char *plain_utf8(PyObject *s, Py_ssize_t *n)
{
    if (!PyUnicode_CheckExact(s))
        return NULL;
    const char *u = PyUnicode_AsUTF8AndSize(s, n);
    if (!u)
        PyErr_Clear();
    return u;
}

/* What one op holds while librados copies it in (the GIL released): every string's bytes, the
 * objects they live in held by the references in ``held``. */
typedef struct {
    const char **keys, **vals;
    size_t *lens;
    Py_ssize_t n;
} Arrays;

static PyObject *write_op_send(PyObject *module, PyObject *args)
{
    PyObject *fns_t, *fence, *asserts, *remove, *ranges, *sets, *records;
    unsigned long long ioctx;
    const char *oid;
    int create;
    WriteFns f;
    char *keybuf = NULL; /* the records' keys, made here */
    uint64_t t0 = 0;
    Py_ssize_t nk = 0;
    (void)module;
    if (!PyArg_ParseTuple(args, "OKyiOO!O!O!O!O:write_op_send", &fns_t, &ioctx, &oid, &create, &fence, &PyList_Type,
                          &asserts, &PyList_Type, &remove, &PyList_Type, &ranges, &PyDict_Type, &sets, &records))
        return NULL;
    if (write_fns_of(fns_t, &f) < 0)
        return NULL;
    if (fence != Py_None && !PyBytes_CheckExact(fence))
        Py_RETURN_NONE;
    Py_ssize_t na = PyList_GET_SIZE(asserts), nr = PyList_GET_SIZE(remove), ng = PyList_GET_SIZE(ranges);
    Py_ssize_t ns = PyDict_GET_SIZE(sets);
    /* records: None, or (t, pending): data keys "d.<16 hex of t + i><tail>" for the i-th
     * (mutation, value, tail) of pending, its value the value (keys.time_bound(t + i) + tail). */
    PyObject *recs = NULL;
    RecordsObject *rb = NULL; /* the records in prepare_records' buffers */
    if (records != Py_None) {
        if (!PyTuple_CheckExact(records) || PyTuple_GET_SIZE(records) != 2)
            Py_RETURN_NONE;
        if (Py_IS_TYPE(PyTuple_GET_ITEM(records, 1), &RecordsType))
            rb = (RecordsObject *)PyTuple_GET_ITEM(records, 1);
        else if (!PyList_CheckExact(PyTuple_GET_ITEM(records, 1)))
            Py_RETURN_NONE;
        t0 = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(records, 0));
        if (t0 == (uint64_t)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        recs = PyTuple_GET_ITEM(records, 1);
        nk = rb ? rb->n : PyList_GET_SIZE(recs);
        if (nk && t0 + (uint64_t)nk - 1 < t0) /* past 2**64: keys.time_hex refuses it */
            Py_RETURN_NONE;
    }
    ns += nk;
    /* One block for all the pointers: asserts (key, value), removals, ranges (begin, end), set. */
    Py_ssize_t slots = 2 * na + nr + 2 * ng + 2 * ns + 1;
    const char **ptr = PyMem_Malloc(sizeof(char *) * (size_t)slots);
    size_t *len = PyMem_Malloc(sizeof(size_t) * (size_t)slots);
    uint8_t *cmp = PyMem_Malloc((size_t)(na ? na : 1));
    PyObject *held = PyList_New(0); /* the objects whose bytes the pointers reach */
    int plain = 1;
    if (!ptr || !len || !cmp || !held) {
        PyMem_Free(ptr);
        PyMem_Free(len);
        PyMem_Free(cmp);
        Py_XDECREF(held);
        return PyErr_NoMemory();
    }
    Py_ssize_t at = 0;
#define HOLD(o)                                                                                                        \
    do {                                                                                                               \
        if (PyList_Append(held, (o)) < 0)                                                                              \
            goto fail;                                                                                                 \
    } while (0)
#define TEXT(o)                                                                                                        \
    do {                                                                                                               \
        Py_ssize_t n_;                                                                                                 \
        const char *u_ = plain_utf8((o), &n_);                                                                         \
        if (!u_) {                                                                                                     \
            plain = 0;                                                                                                 \
            goto done;                                                                                                 \
        }                                                                                                              \
        HOLD(o);                                                                                                       \
        ptr[at] = u_;                                                                                                  \
        len[at++] = (size_t)n_;                                                                                        \
    } while (0)
    for (Py_ssize_t i = 0; i < na; i++) {
        PyObject *a = PyList_GET_ITEM(asserts, i);
        if (!PyTuple_CheckExact(a) || PyTuple_GET_SIZE(a) != 3) {
            plain = 0;
            goto done;
        }
        long c = PyLong_AsLong(PyTuple_GET_ITEM(a, 1));
        if (c == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            plain = 0;
            goto done;
        }
        if (c < 0 || c > 255) {
            plain = 0;
            goto done;
        }
        cmp[i] = (uint8_t)c;
        TEXT(PyTuple_GET_ITEM(a, 0));
        TEXT(PyTuple_GET_ITEM(a, 2));
    }
    for (Py_ssize_t i = 0; i < nr; i++)
        TEXT(PyList_GET_ITEM(remove, i));
    for (Py_ssize_t i = 0; i < ng; i++) {
        PyObject *r = PyList_GET_ITEM(ranges, i);
        if (!PyTuple_CheckExact(r) || PyTuple_GET_SIZE(r) != 2) {
            plain = 0;
            goto done;
        }
        TEXT(PyTuple_GET_ITEM(r, 0));
        TEXT(PyTuple_GET_ITEM(r, 1));
    }
    {
        /* The set: keys in the dict's order, as tuple(op.set) gives them to the binding. */
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        Py_ssize_t first = at;
        while (PyDict_Next(sets, &pos, &k, &v)) {
            TEXT(k);
        }
        pos = 0;
        while (PyDict_Next(sets, &pos, &k, &v)) {
            if (!PyBytes_CheckExact(v)) {
                plain = 0;
                goto done;
            }
            HOLD(v);
            ptr[at] = PyBytes_AS_STRING(v);
            len[at++] = (size_t)PyBytes_GET_SIZE(v);
        }
        Py_ssize_t nd = (at - first) / 2;
        if (nd + nk != ns) { /* the dict changed under us: let Python build it */
            plain = 0;
            goto done;
        }
        if (nk) {
            /* Keys after the dict's keys, values after its values: shift the dict's values. */
            memmove(ptr + first + ns, ptr + first + nd, sizeof(char *) * (size_t)nd);
            memmove(len + first + ns, len + first + nd, sizeof(size_t) * (size_t)nd);
            keybuf = PyMem_Malloc((size_t)nk * (18 + 43 + 1));
            if (!keybuf) {
                PyErr_NoMemory();
                goto fail;
            }
            HOLD(recs);
            static const char HEX[] = "0123456789abcdef";
            char *w = keybuf;
            for (Py_ssize_t i = 0; i < nk; i++) {
                const char *tail, *vbuf;
                size_t vlen;
                if (rb) {
                    tail = rb->tails + 43 * i;
                    vbuf = rb->vals + rb->voff[i];
                    vlen = rb->voff[i + 1] - rb->voff[i];
                } else {
                    PyObject *p = PyList_GET_ITEM(recs, i);
                    PyObject *v, *t;
                    if (!PyTuple_CheckExact(p) || PyTuple_GET_SIZE(p) != 3 || !PyBytes_CheckExact(v = PyTuple_GET_ITEM(p, 1))
                        || !PyUnicode_CheckExact(t = PyTuple_GET_ITEM(p, 2)) || !PyUnicode_IS_ASCII(t)
                        || PyUnicode_GET_LENGTH(t) != 43) {
                        plain = 0;
                        goto done;
                    }
                    tail = (const char *)PyUnicode_DATA(t);
                    vbuf = PyBytes_AS_STRING(v);
                    vlen = (size_t)PyBytes_GET_SIZE(v);
                }
                uint64_t t = t0 + (uint64_t)i;
                w[0] = 'd';
                w[1] = '.';
                for (int d = 0; d < 16; d++)
                    w[2 + d] = HEX[(t >> (60 - 4 * d)) & 15];
                memcpy(w + 18, tail, 43);
                w[61] = 0;
                ptr[first + nd + i] = w;
                len[first + nd + i] = 61;
                ptr[first + ns + nd + i] = vbuf;
                len[first + ns + nd + i] = vlen;
                w += 62;
            }
            at = first + 2 * ns;
        }
    }
#undef TEXT
#undef HOLD
    {
        void *op = ((create_write_op_fn)f.fn[W_CREATE_OP])();
        void *completion = NULL;
        int ret;
        if (!op)
            goto nomem;
        Py_BEGIN_ALLOW_THREADS
        Py_ssize_t j = 0;
        if (create == 2) /* must_exist: compare the empty key, which can never be set */
            ((write_op_omap_cmp_fn)f.fn[W_CMP])(op, "", 1 /* EQ */, "", 0, NULL);
        else
            ((write_op_create_fn)f.fn[W_CREATE])(op, create == 1, NULL);
        if (fence != Py_None)
            ((write_op_exec_fn)f.fn[W_EXEC])(op, "lock", "assert_locked", PyBytes_AS_STRING(fence),
                                             (size_t)PyBytes_GET_SIZE(fence), NULL);
        for (Py_ssize_t i = 0; i < na; i++, j += 2)
            ((write_op_omap_cmp_fn)f.fn[W_CMP])(op, ptr[j], cmp[i], ptr[j + 1], len[j + 1], NULL);
        if (nr)
            ((write_op_omap_rm_keys_fn)f.fn[W_RM_KEYS])(op, ptr + j, (size_t)nr);
        j += nr;
        for (Py_ssize_t i = 0; i < ng; i++, j += 2)
            ((write_op_omap_rm_range2_fn)f.fn[W_RM_RANGE2])(op, ptr[j], len[j], ptr[j + 1], len[j + 1]);
        if (ns)
            ((write_op_omap_set_fn)f.fn[W_SET])(op, ptr + j, ptr + j + ns, len + j + ns, (size_t)ns);
        ret = ((aio_create_completion2_fn)f.fn[W_COMPLETION])(NULL, NULL, &completion);
        if (ret >= 0) {
            ret = ((aio_write_op_operate_fn)f.fn[W_OPERATE])(op, (void *)(uintptr_t)ioctx, completion, oid, NULL, 0);
            if (ret < 0) {
                ((aio_release_fn)f.fn[W_RELEASE])(completion);
                completion = NULL;
            }
        }
        /* librados copied the op's parts when they were added and the op when it was sent. */
        ((release_write_op_fn)f.fn[W_RELEASE_OP])(op);
        Py_END_ALLOW_THREADS
        PyMem_Free(ptr);
        PyMem_Free(len);
        PyMem_Free(cmp);
        PyMem_Free(keybuf);
        Py_DECREF(held);
        if (!completion)
            return Py_BuildValue("iO", ret < 0 ? ret : -12 /* ENOMEM */, Py_None);
        Pending *p = PyMem_Malloc(sizeof(Pending));
        if (!p) {
            ((aio_wait_for_complete_fn)f.fn[W_WAIT])(completion);
            ((aio_release_fn)f.fn[W_RELEASE])(completion);
            return PyErr_NoMemory();
        }
        p->completion = completion;
        p->release = (aio_release_fn)f.fn[W_RELEASE];
        PyObject *capsule = PyCapsule_New(p, PENDING_NAME, pending_free);
        if (!capsule) {
            p->release(completion);
            PyMem_Free(p);
            return NULL;
        }
        return Py_BuildValue("iN", 0, capsule);
    }
nomem:
    PyErr_NoMemory();
fail:
    PyMem_Free(ptr);
    PyMem_Free(len);
    PyMem_Free(cmp);
    PyMem_Free(keybuf);
    Py_DECREF(held);
    return NULL;
done:
    PyMem_Free(ptr);
    PyMem_Free(len);
    PyMem_Free(cmp);
    PyMem_Free(keybuf);
    Py_DECREF(held);
    (void)plain;
    Py_RETURN_NONE;
}

static PyObject *write_op_wait(PyObject *module, PyObject *args)
{
    PyObject *fns_t, *capsule;
    WriteFns f;
    (void)module;
    if (!PyArg_ParseTuple(args, "OO:write_op_wait", &fns_t, &capsule))
        return NULL;
    if (write_fns_of(fns_t, &f) < 0)
        return NULL;
    Pending *p = PyCapsule_GetPointer(capsule, PENDING_NAME);
    if (!p)
        return NULL;
    if (!p->completion) {
        PyErr_SetString(PyExc_ValueError, "write_op_wait: this op was waited for already");
        return NULL;
    }
    void *c = p->completion;
    int ret;
    Py_BEGIN_ALLOW_THREADS
    ((aio_wait_for_complete_fn)f.fn[W_WAIT])(c);
    ret = ((aio_get_return_value_fn)f.fn[W_RETURN])(c);
    ((aio_release_fn)f.fn[W_RELEASE])(c);
    Py_END_ALLOW_THREADS
    p->completion = NULL;
    return PyLong_FromLong(ret);
}

static PyObject *index_facts(PyObject *module, PyObject *args); /* index_facts' section, at the end */
static PyObject *untrack_plain(PyObject *module, PyObject *args); /* untrack_plain's section, at the end */

static PyMethodDef METHODS[] = {
    {"encode_raw_many", encode_raw_many, METH_VARARGS,
     "encode_raw_many(items, version) -> list[bytes] | None: the JSON lines of (recorded time, "
     "stored value) pairs, or None for a shape only the Python encoder handles."},
    {"encode_entries", encode_entries, METH_VARARGS,
     "encode_entries(entries, time_start, time_end, version) -> (list[int], list[bytes]) | None: "
     "encode_raw_many of index entries (key, stored value) whose key holds the recorded time in "
     "hex at [time_start:time_end]: the times and the lines."},
    {"prepare_records", prepare_records, METH_VARARGS,
     "prepare_records(batch, shards, mutation_type) -> (dict[int, list[(mutation, value, tail)]], "
     "dict[int, dict[str, (first, last)] | None]) | None: changelog.pipeline.index._prepare_py of a "
     "batch of exactly ``mutation_type`` and each shard's runs (index._runs_py), or None for a record "
     "only the Python way handles."},
    {"map_bilog_page", map_bilog_page, METH_VARARGS,
     "map_bilog_page(entries, start, facts, observed_ns, consts, ops, mutation_type) -> list | None: "
     "rgw_module.mapping.ShardMapper.map of entries[start:] (a Mutation, None, or Ellipsis where "
     "Python decides), or None for arguments only Python handles."},
    {"dir_entry", dir_entry, METH_O,
     "dir_entry(data) -> tuple | None: rgw_module.bucket_index._fast_dir_entry's fields of a "
     "well-formed bucket index entry, None where the careful reader decides (Ellipsis: not bytes)."},
    {"index_lookups", index_lookups, METH_VARARGS,
     "index_lookups(page, lookup_type, (instance_prefix, '')) -> list | None: "
     "rgw_module.bucket_index.lookups(page), or None where the Python code decides."},
    {"omap_get_keys", omap_get_keys, METH_VARARGS,
     "omap_get_keys((create, release, by_keys2, operate, next2, end), ioctx, oid, keys) -> "
     "(ret, rval, dict | None): one omap read by keys through librados' functions at those "
     "addresses (ctypes'); the dict only when ret and rval are >= 0."},
    {"record_rows", record_rows, METH_VARARGS,
     "record_rows(t, pending) -> [key, value, ...]: a RecordOp's data keys and values, flat, or None"},
    {"fast_marks", fast_marks, METH_VARARGS,
     "fast_marks(pending, streams, shard, mutation_type) -> (old, high) | None: "
     "changelog.pipeline.index._fast_marks (None: not the fast path, or a shape Python decides)."},
    {"write_op_send", write_op_send, METH_VARARGS,
     "write_op_send(functions, ioctx, oid, create, fence, asserts, remove, ranges, set, records) -> (ret, pending) | None: "
     "RadosStore._build's write op built and sent (aio) through librados' functions at those addresses; "
     "None for a shape only the Python path builds."},
    {"write_op_wait", write_op_wait, METH_VARARGS,
     "write_op_wait(functions, pending) -> int: wait for a sent op (the GIL released) and release it: "
     "its return value."},
    {"index_facts", index_facts, METH_VARARGS,
     "index_facts(wanted, values, (facts_type, instance_prefix, max_bytes)) -> dict | None: "
     "rgw_module.bucket_index.BucketIndexReader.facts after its omap read, or None where the "
     "Python code decides."},
    {"untrack_plain", untrack_plain, METH_VARARGS,
     "untrack_plain(objs, record_type, op_type) -> int: take the plain dicts (JSON values) and "
     "record_type instances of plain fields in the list objs out of the cyclic GC: how many."},
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
    if (map_init() < 0)
        return NULL;
    if (PyType_Ready(&RecordsType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&MODULE);
    if (module != NULL && PyModule_AddObjectRef(module, "Records", (PyObject *)&RecordsType) < 0)
        Py_CLEAR(module);
    return module;
}

/* ==================================================================================================
 * index_facts: rgw_module.bucket_index.BucketIndexReader.facts after its omap read (issue 17,
 * follower catch-up CPU). Given the page's lookups (``lookups``: Lookup tuples) and the values
 * read, each lookup's keys are tried in order as ``facts`` tries them: the entry decoded by
 * ``dir_entry`` above, the first key whose entry describes content and carries the write's ``ver``
 * (or mtime) gives the write its ObjectFacts. Anything but that common case hands the whole page
 * back to the Python reference (returns None): a value not bytes or over ``max_bytes``, an entry
 * ``dir_entry`` does not take (the careful reader decides, and logs what is wrong), a null
 * instance entry no null version made (NO_WRITE and its chain, ``_earlier_no_writes``), a
 * cancelled operation's entry (matched by the page's timestamps), a lookup or values of another
 * shape. tests/unit/test_index_facts.py compares both ways.
 * ================================================================================================== */

#define IF_FLAG_VER 0x1
#define IF_FLAG_VER_MARKER 0x8

/* a == b for two Python ints (or anything comparable): 1, 0, or -1 with an error set. */
static int if_eq(PyObject *a, PyObject *b)
{
    if (a == b)
        return 1;
    return PyObject_RichCompareBool(a, b, Py_EQ);
}

/* Whether dir entry tuple ``d`` (``dir_entry``'s fields) carries the lookup's ver or mtime
 * (``Lookup.matches``): 1, 0, or -1 with an error set. */
static int if_matches(PyObject *d, PyObject *pool, PyObject *epoch, PyObject *mtime)
{
    if (PyTuple_GET_ITEM(d, 2) != Py_True)
        return 0;
    if (mtime != Py_None)
        return if_eq(PyTuple_GET_ITEM(d, 7), mtime);
    int r = if_eq(PyTuple_GET_ITEM(d, 3), pool);
    return r <= 0 ? r : if_eq(PyTuple_GET_ITEM(d, 4), epoch);
}

/* index_facts(wanted, values, (facts_type, instance_prefix, max_bytes)) -> dict | None */
static PyObject *index_facts(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *wanted, *values, *consts;
    if (!PyArg_ParseTuple(args, "OOO", &wanted, &values, &consts))
        return NULL;
    if (!PyList_CheckExact(wanted) || !PyDict_CheckExact(values) || !PyTuple_CheckExact(consts)
        || PyTuple_GET_SIZE(consts) != 3 || !PyType_Check(PyTuple_GET_ITEM(consts, 0))
        || !PyBytes_CheckExact(PyTuple_GET_ITEM(consts, 1)) || !PyLong_CheckExact(PyTuple_GET_ITEM(consts, 2)))
        Py_RETURN_NONE;
    PyTypeObject *facts_type = (PyTypeObject *)PyTuple_GET_ITEM(consts, 0);
    if (!PyType_IsSubtype(facts_type, &PyTuple_Type))
        Py_RETURN_NONE;
    const char *prefix = PyBytes_AS_STRING(PyTuple_GET_ITEM(consts, 1));
    Py_ssize_t prefix_len = PyBytes_GET_SIZE(PyTuple_GET_ITEM(consts, 1));
    Py_ssize_t max_bytes = PyLong_AsSsize_t(PyTuple_GET_ITEM(consts, 2));
    if (max_bytes == -1 && PyErr_Occurred())
        return NULL;
    PyObject *billion = PyLong_FromLongLong(1000000000LL);
    PyObject *out = PyDict_New();
    if (out == NULL || billion == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(wanted); i++) {
        PyObject *w = PyList_GET_ITEM(wanted, i);
        if (!PyTuple_Check(w) || PyTuple_GET_SIZE(w) != 5 || !PyTuple_CheckExact(PyTuple_GET_ITEM(w, 1)))
            goto fallback;
        PyObject *position = PyTuple_GET_ITEM(w, 0), *keys = PyTuple_GET_ITEM(w, 1);
        PyObject *pool = PyTuple_GET_ITEM(w, 2), *epoch = PyTuple_GET_ITEM(w, 3), *mtime = PyTuple_GET_ITEM(w, 4);
        if (!PyUnicode_CheckExact(position) || !PyLong_CheckExact(pool) || !PyLong_CheckExact(epoch)
            || (mtime != Py_None && !PyLong_CheckExact(mtime)))
            goto fallback;
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(keys); k++) {
            PyObject *key = PyTuple_GET_ITEM(keys, k);
            if (!PyBytes_CheckExact(key))
                goto fallback;
            PyObject *raw = PyDict_GetItemWithError(values, key); /* borrowed */
            if (raw == NULL) {
                if (PyErr_Occurred())
                    goto fail;
                continue;
            }
            if (!PyBytes_CheckExact(raw) || PyBytes_GET_SIZE(raw) > max_bytes)
                goto fallback;
            PyObject *d = dir_entry(NULL, raw);
            if (d == NULL)
                goto fail;
            if (!PyTuple_CheckExact(d)) {
                Py_DECREF(d);
                goto fallback; /* the careful reader decides (and says what is wrong) */
            }
            long long flags = PyLong_AsLongLong(PyTuple_GET_ITEM(d, 11));
            if (flags == -1 && PyErr_Occurred()) {
                Py_DECREF(d);
                goto fail;
            }
            int m = if_matches(d, pool, epoch, mtime);
            if (m < 0) {
                Py_DECREF(d);
                goto fail;
            }
            int is_instance = PyBytes_GET_SIZE(key) >= prefix_len
                              && memcmp(PyBytes_AS_STRING(key), prefix, (size_t)prefix_len) == 0;
            if (is_instance && !(flags & IF_FLAG_VER) && PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(d, 1)) == 0 && m) {
                Py_DECREF(d);
                goto fallback; /* NO_WRITE: Python marks it and its chain */
            }
            /* _describes_content: an etag, and an mtime of at least 1 s */
            int content = PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(d, 8)) > 0;
            if (content) {
                content = PyObject_RichCompareBool(PyTuple_GET_ITEM(d, 7), billion, Py_GE);
                if (content < 0) {
                    Py_DECREF(d);
                    goto fail;
                }
            }
            if (!content) {
                Py_DECREF(d);
                continue;
            }
            if (!m) {
                /* _cancelled: a live entry with ver (-1, 0), not a placeholder */
                long long p = PyLong_AsLongLong(PyTuple_GET_ITEM(d, 3));
                if (p == -1 && PyErr_Occurred()) {
                    Py_DECREF(d);
                    goto fail;
                }
                int zero = PyObject_Not(PyTuple_GET_ITEM(d, 4));
                if (zero < 0) {
                    Py_DECREF(d);
                    goto fail;
                }
                int cancelled = PyTuple_GET_ITEM(d, 2) == Py_True && p == -1 && zero
                                && !(flags & IF_FLAG_VER_MARKER);
                Py_DECREF(d);
                if (cancelled)
                    goto fallback; /* matched by the page's timestamps: Python */
                continue;
            }
            PyObject *f = facts_type->tp_alloc(facts_type, 5);
            if (f == NULL) {
                Py_DECREF(d);
                goto fail;
            }
            static const int FIELDS[5] = {10, 8, 7, 9, 14}; /* accounted_size, etag, mtime, class, owner */
            for (int j = 0; j < 5; j++) {
                PyObject *v = PyTuple_GET_ITEM(d, FIELDS[j]);
                Py_INCREF(v);
                PyTuple_SET_ITEM(f, j, v);
            }
            Py_DECREF(d);
            PyObject_GC_UnTrack(f); /* ints, strs and None: no cycle can go through it */
            int rc = PyDict_SetItem(out, position, f);
            Py_DECREF(f);
            if (rc < 0)
                goto fail;
            break;
        }
    }
    Py_DECREF(billion);
    return out;
fallback:
    Py_XDECREF(out);
    Py_XDECREF(billion);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(out);
    Py_XDECREF(billion);
    return NULL;
}

/* ==================================================================================================
 * untrack_plain: take a bilog page's entries and its records out of the cyclic GC's lists (issue
 * 17, follower catch-up CPU). A round of the follower keeps ~16,000 entries and as many records
 * alive (and the next two rounds' pages): enough surviving containers to set off a full
 * collection over every live object about once a round (measured: 2.4-5.7 us an entry of full
 * collections, 4-7 us with the young ones, out of ~25). None of these objects can be part of a
 * cycle: an entry is a dict of strs, ints, floats, bools and None and of such dicts (the JSON
 * radosgw sends: ``ver``), a record a ``Mutation`` (frozen, slots) whose fields are such values,
 * an ``Op`` member or such a dict. Anything else (a list, another object, a dict holding one) is
 * left tracked. A dict that is given a container later tracks itself again (CPython's dicts do).
 * Returns how many objects were untracked.
 * ================================================================================================== */

static int up_atomic(PyObject *v)
{
    return v == Py_None || PyUnicode_CheckExact(v) || PyLong_CheckExact(v) || PyBool_Check(v)
           || PyFloat_CheckExact(v) || PyBytes_CheckExact(v);
}

/* Whether dict ``d`` holds only atomic keys and values, or (depth > 0) such dicts as values. */
static int up_plain_dict(PyObject *d, int depth)
{
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(d, &pos, &k, &v)) {
        if (!up_atomic(k))
            return 0;
        if (up_atomic(v))
            continue;
        if (depth > 0 && PyDict_CheckExact(v) && up_plain_dict(v, depth - 1))
            continue;
        return 0;
    }
    return 1;
}

/* Whether every slot of record ``o`` (of a __slots__ class: its tp_members) is atomic, an
 * instance of ``op_type`` or a plain dict. */
static int up_plain_record(PyObject *o, PyTypeObject *op_type)
{
    PyMemberDef *m = Py_TYPE(o)->tp_members;
    if (m == NULL)
        return 0;
    for (; m->name != NULL; m++) {
        if (m->type != T_OBJECT_EX && m->type != T_OBJECT)
            continue;
        PyObject *v = *(PyObject **)((char *)o + m->offset);
        if (v == NULL || up_atomic(v) || Py_TYPE(v) == op_type)
            continue;
        if (PyDict_CheckExact(v) && up_plain_dict(v, 0))
            continue;
        return 0;
    }
    return 1;
}

/* untrack_plain(objs, record_type, op_type) -> int */
static PyObject *untrack_plain(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *objs, *record_type, *op_type;
    if (!PyArg_ParseTuple(args, "OOO", &objs, &record_type, &op_type))
        return NULL;
    if (!PyList_CheckExact(objs) || !PyType_Check(record_type) || !PyType_Check(op_type))
        return PyLong_FromLong(0);
    long n = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(objs); i++) {
        PyObject *o = PyList_GET_ITEM(objs, i);
        if (!PyObject_GC_IsTracked(o))
            continue;
        if (PyDict_CheckExact(o) ? up_plain_dict(o, 1)
                                 : Py_TYPE(o) == (PyTypeObject *)record_type
                                       && up_plain_record(o, (PyTypeObject *)op_type)) {
            PyObject_GC_UnTrack(o);
            n++;
        }
    }
    return PyLong_FromLong(n);
}
