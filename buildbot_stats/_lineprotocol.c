/* The fast path of buildbot_stats.lineprotocol, compiled: the usual point, in C.
 *
 * The usual point has str names and tags whose escaped prefix the Python
 * encoder has already made and cached by the point's shape (series, tag keys
 * and values, field keys; see _Encoder._shape), and int, float, bool or plain
 * ASCII str fields.  This module writes such a point's line itself; for every
 * other point it calls the Python encoder's ``line(point, divisor)`` (which
 * also caches new shapes), so the rules stay in one place, in Python, and the
 * output is the same byte for byte (tests/unit/test_lineprotocol_accel.py).
 *
 * Why: encoding is most of the spool thread's time, and the spool thread
 * shares the master's GIL with the reactor and the HTTP posts.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define MAX_STRING_BYTES (64 * 1024 - 1)

static PyObject *s_series, *s_fields, *s_tags, *s_time_ns;

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} Buf;

static int
buf_reserve(Buf *b, Py_ssize_t need)
{
    if (b->len + need <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 8192;
    while (cap < b->len + need)
        cap *= 2;
    char *p = PyMem_Realloc(b->p, cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static int
buf_put(Buf *b, const char *s, Py_ssize_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

/* 1: written; 0: not a str this module writes (a lone surrogate); -1: error */
static int
buf_str(Buf *b, PyObject *u)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(u, &n);
    if (s == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    return buf_put(b, s, n) < 0 ? -1 : 1;
}

/* Python's floor division, for a positive divisor */
static long long
floor_div(long long a, long long d)
{
    long long q = a / d;
    if (a % d != 0 && a < 0)
        q -= 1;
    return q;
}

/* One value after "key=": 1 written, 0 not a value this module writes, -1 error */
static int
put_value(Buf *b, PyObject *v)
{
    char num[32];
    if (Py_IS_TYPE(v, &PyBool_Type))
        return buf_put(b, v == Py_True ? "true" : "false", v == Py_True ? 4 : 5) < 0 ? -1 : 1;
    if (PyLong_CheckExact(v)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow)
            return 0; /* beyond 64 bits: the Python rules convert it */
        if (x == -1 && PyErr_Occurred())
            return -1;
        int n = snprintf(num, sizeof num, "%lldi", x);
        return buf_put(b, num, n) < 0 ? -1 : 1;
    }
    if (PyFloat_CheckExact(v)) {
        double d = PyFloat_AS_DOUBLE(v);
        if (!isfinite(d))
            return 0;
        /* exactly what repr(float) does */
        char *r = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (r == NULL)
            return -1;
        int rc = buf_put(b, r, (Py_ssize_t)strlen(r));
        PyMem_Free(r);
        return rc < 0 ? -1 : 1;
    }
    if (PyUnicode_CheckExact(v) && PyUnicode_IS_ASCII(v)) {
        /* plain text: nothing to escape, replace or cut */
        Py_ssize_t n = PyUnicode_GET_LENGTH(v);
        const char *s = (const char *)PyUnicode_1BYTE_DATA(v);
        if (n > MAX_STRING_BYTES || memchr(s, '"', n) != NULL || memchr(s, '\\', n) != NULL)
            return 0;
        if (buf_reserve(b, n + 2) < 0)
            return -1;
        b->p[b->len++] = '"';
        memcpy(b->p + b->len, s, n);
        b->len += n;
        b->p[b->len++] = '"';
        return 1;
    }
    return 0;
}

/* The line of one point: 1 written, 0 for the Python encoder, -1 error (the buffer is
 * left as it was found unless 1). */
static int
put_line(Buf *b, PyObject *point, PyObject *shapes, long long divisor)
{
    Py_ssize_t start = b->len;
    PyObject *series = NULL, *tags = NULL, *fields = NULL, *t = NULL, *key = NULL;
    PyObject *k, *v;
    Py_ssize_t pos, i;
    int rc = 0;

    series = PyObject_GetAttr(point, s_series);
    if (series == NULL)
        goto error;
    tags = PyObject_GetAttr(point, s_tags);
    if (tags == NULL)
        goto error;
    fields = PyObject_GetAttr(point, s_fields);
    if (fields == NULL)
        goto error;
    t = PyObject_GetAttr(point, s_time_ns);
    if (t == NULL)
        goto error;
    if (!PyUnicode_CheckExact(series) || !PyDict_CheckExact(tags) || !PyDict_CheckExact(fields) ||
        !PyLong_CheckExact(t) || PyDict_GET_SIZE(fields) == 0)
        goto done;
    int overflow = 0;
    long long stamp = PyLong_AsLongLongAndOverflow(t, &overflow);
    if (overflow)
        goto done;
    if (stamp == -1 && PyErr_Occurred())
        goto error;

    /* the shape key, as _Encoder.line makes it: (series, len(tags), *tags, *tags.values(), *fields) */
    Py_ssize_t nt = PyDict_GET_SIZE(tags), nf = PyDict_GET_SIZE(fields);
    key = PyTuple_New(2 + 2 * nt + nf);
    if (key == NULL)
        goto error;
    Py_INCREF(series);
    PyTuple_SET_ITEM(key, 0, series);
    PyObject *count = PyLong_FromSsize_t(nt);
    if (count == NULL)
        goto error;
    PyTuple_SET_ITEM(key, 1, count);
    pos = 0;
    i = 0;
    while (PyDict_Next(tags, &pos, &k, &v)) {
        if (!PyUnicode_CheckExact(k) || !PyUnicode_CheckExact(v) || i >= nt)
            goto done; /* only exact str tags match a fast shape */
        Py_INCREF(k);
        PyTuple_SET_ITEM(key, 2 + i, k);
        Py_INCREF(v);
        PyTuple_SET_ITEM(key, 2 + nt + i, v);
        i++;
    }
    if (i != nt)
        goto done;
    pos = 0;
    i = 0;
    while (PyDict_Next(fields, &pos, &k, &v)) {
        if (!PyUnicode_CheckExact(k) || i >= nf)
            goto done;
        Py_INCREF(k);
        PyTuple_SET_ITEM(key, 2 + 2 * nt + i, k);
        i++;
    }
    if (i != nf)
        goto done;
    PyObject *shape = PyDict_GetItemWithError(shapes, key); /* borrowed */
    if (shape == NULL) {
        if (PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_Exception))
                goto error; /* KeyboardInterrupt, SystemExit: they go on up */
            PyErr_Clear();  /* the Python encoder says what failed */
        }
        goto done; /* a new shape: the Python encoder makes and caches it */
    }
    /* (prefix, its problems), or False for the general path */
    if (!PyTuple_CheckExact(shape) || PyTuple_GET_SIZE(shape) != 2)
        goto done;
    PyObject *prefix = PyTuple_GET_ITEM(shape, 0), *problems = PyTuple_GET_ITEM(shape, 1);
    if (!PyUnicode_CheckExact(prefix) || !PyList_CheckExact(problems) || PyList_GET_SIZE(problems) != 0)
        goto done; /* problems are reported by the Python encoder */

    rc = buf_str(b, prefix);
    if (rc <= 0)
        goto fail;
    if (buf_put(b, " ", 1) < 0)
        goto error;
    pos = 0;
    i = 0;
    while (PyDict_Next(fields, &pos, &k, &v)) {
        if (i++ && buf_put(b, ",", 1) < 0)
            goto error;
        rc = buf_str(b, k);
        if (rc <= 0)
            goto fail;
        if (buf_put(b, "=", 1) < 0)
            goto error;
        rc = put_value(b, v);
        if (rc <= 0)
            goto fail;
    }
    char num[32];
    int n = snprintf(num, sizeof num, " %lld", divisor == 1 ? stamp : floor_div(stamp, divisor));
    if (buf_put(b, num, n) < 0)
        goto error;
    rc = 1;
    goto done;

fail:
    if (rc < 0)
        goto error;
    rc = 0;
    goto done;
error:
    rc = -1;
done:
    if (rc != 1)
        b->len = start;
    Py_XDECREF(series);
    Py_XDECREF(tags);
    Py_XDECREF(fields);
    Py_XDECREF(t);
    Py_XDECREF(key);
    return rc;
}

PyDoc_STRVAR(encode_doc,
"encode(points, shapes, divisor, line, as_lines) -> (bytes body, skipped) or list\n\
\n\
The line protocol of ``points`` (a list): the usual ones written here, every\n\
other one by ``line(point, divisor)`` (str, or None when it has no field\n\
left).  ``shapes`` is that encoder's cache of prefixes by shape.  With\n\
``as_lines`` false: the lines joined by newlines, as UTF-8, and how many\n\
points had no line; with it true: one str or None per point.");

static PyObject *
encode(PyObject *self, PyObject *args)
{
    PyObject *points, *shapes, *line;
    long long divisor;
    int as_lines;
    if (!PyArg_ParseTuple(args, "O!O!LOp:encode", &PyList_Type, &points, &PyDict_Type, &shapes, &divisor,
                          &line, &as_lines))
        return NULL;
    if (divisor <= 0) {
        PyErr_SetString(PyExc_ValueError, "divisor must be positive");
        return NULL;
    }
    Buf b = {NULL, 0, 0};
    PyObject *result = NULL, *lines = NULL;
    Py_ssize_t skipped = 0;
    if (as_lines) {
        lines = PyList_New(0);
        if (lines == NULL)
            return NULL;
    }
    /* the list may change size while ``line`` runs Python code: index it each time */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(points); i++) {
        PyObject *point = PyList_GET_ITEM(points, i);
        Py_INCREF(point);
        Py_ssize_t start = b.len;
        if (!as_lines && i - skipped > 0 && buf_put(&b, "\n", 1) < 0) {
            Py_DECREF(point);
            goto error;
        }
        int rc = put_line(&b, point, shapes, divisor);
        if (rc < 0) {
            Py_DECREF(point);
            goto error;
        }
        PyObject *text = NULL;
        if (rc == 0) {
            text = PyObject_CallFunction(line, "OL", point, divisor);
            if (text == NULL) {
                Py_DECREF(point);
                goto error;
            }
            if (text != Py_None && !PyUnicode_Check(text)) {
                PyErr_SetString(PyExc_TypeError, "line() must return str or None");
                Py_DECREF(text);
                Py_DECREF(point);
                goto error;
            }
        }
        Py_DECREF(point);
        if (as_lines) {
            PyObject *item = text;
            if (item == NULL) { /* written here */
                item = PyUnicode_DecodeUTF8(b.p + start, b.len - start, "strict");
                b.len = start;
                if (item == NULL)
                    goto error;
            }
            int failed = PyList_Append(lines, item);
            Py_DECREF(item);
            if (failed < 0)
                goto error;
            continue;
        }
        if (text == NULL)
            continue;
        if (text == Py_None) {
            b.len = start; /* no newline for a point without a line */
            skipped++;
            Py_DECREF(text);
            continue;
        }
        int put = buf_str(&b, text);
        Py_DECREF(text);
        if (put <= 0) {
            if (put == 0) /* what the Python encoder made is valid Unicode: this is a bug */
                PyErr_SetString(PyExc_ValueError, "line() returned text that UTF-8 cannot encode");
            goto error;
        }
    }
    if (as_lines) {
        result = lines;
        lines = NULL;
    } else {
        result = Py_BuildValue("(y#n)", b.p ? b.p : "", b.len, skipped);
    }
error:
    Py_XDECREF(lines);
    PyMem_Free(b.p);
    return result;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS, encode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "buildbot_stats._lineprotocol",
    "The fast path of buildbot_stats.lineprotocol, compiled (optional: the package works without it).",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__lineprotocol(void)
{
    s_series = PyUnicode_InternFromString("series");
    s_fields = PyUnicode_InternFromString("fields");
    s_tags = PyUnicode_InternFromString("tags");
    s_time_ns = PyUnicode_InternFromString("time_ns");
    if (!s_series || !s_fields || !s_tags || !s_time_ns)
        return NULL;
    return PyModule_Create(&module);
}
