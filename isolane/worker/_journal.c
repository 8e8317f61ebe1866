/* isolane.worker._journal: the compiled form of isolane.worker.journal (read that module first).
 *
 * A Cursor is the spool window a writer copies records into; a Journal composes one event's
 * record straight into a Cursor's window: it gives the event its seq and its time, screens it
 * for secrets and publishes it with the newline stored last. The Python module holds the same two
 * classes written in Python, with the same behaviour, for a build without a compiler.
 *
 * Why one C call is safe without a lock: neither type ever releases the GIL, and neither runs
 * Python code between reading and updating its state (wake() is called after a commit is
 * complete). Each call is therefore atomic with respect to every other Python thread, and the
 * spool holds records in seq order whatever threads emit.
 *
 * Hostile input: the window is a writable buffer (a mmap) whose size the Cursor checks before
 * every copy; a record that does not fit is refused (NO_ROOM), never written past the end.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

/* commit() results that are not a seq: what the caller must do before it commits again. */
enum {
    REDACT = 0,       /* a piece may hold a secret: redact the pieces, commit with screened */
    NO_ROOM = -1,     /* the window cannot hold the record: map the next window (need bytes) */
    CLOSED = -2,      /* the journal is closed */
    TOO_LARGE = -3,   /* the record passes max_record: replace the event */
    UNSUPPORTED = -4, /* type_ or node_id is not a str encodable as UTF-8: make it one */
};

/* ---- Cursor ------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    Py_buffer view;   /* the window; view.obj is NULL while none is mapped */
    long long base;   /* the window's offset in the file */
    Py_ssize_t at;    /* where the next record goes, in the window */
} Cursor;

static PyTypeObject CursorType;

static void
cursor_unmap_view(Cursor *self)
{
    if (self->view.obj != NULL) {
        PyBuffer_Release(&self->view);
        self->view.obj = NULL;
    }
}

static int
cursor_init(Cursor *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"tail", NULL};
    long long tail = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|L:Cursor", kwlist, &tail)) {
        return -1;
    }
    if (tail < 0) {
        PyErr_SetString(PyExc_ValueError, "tail cannot be negative");
        return -1;
    }
    cursor_unmap_view(self);
    self->base = tail;
    self->at = 0;
    return 0;
}

static void
cursor_dealloc(Cursor *self)
{
    cursor_unmap_view(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
cursor_map(Cursor *self, PyObject *args)
{
    PyObject *window;
    long long base, tail = self->base + (long long)self->at;
    if (!PyArg_ParseTuple(args, "OL:map", &window, &base)) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(window, &view, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (base < 0 || tail < base || tail - base > (long long)view.len) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "tail %lld is outside the window [%lld, %lld)", tail, base,
                     base + (long long)view.len);
        return NULL;
    }
    cursor_unmap_view(self);
    self->view = view;
    self->base = base;
    self->at = (Py_ssize_t)(tail - base);
    Py_RETURN_NONE;
}

static PyObject *
cursor_unmap(Cursor *self, PyObject *Py_UNUSED(ignored))
{
    self->base += self->at;
    self->at = 0;
    cursor_unmap_view(self);
    Py_RETURN_NONE;
}

/* Copy n bytes to the window and publish them with a newline stored after them. */
static inline void
cursor_publish(Cursor *self, Py_ssize_t n)
{
    char *end = (char *)self->view.buf + self->at + n;
    /* The record's bytes are stored before its newline: a process killed between the two leaves
     * a torn record (no newline), never a published one with bytes missing; and a reader on
     * another CPU that sees the newline sees the bytes (a release fence: free on x86). The bytes
     * themselves may land in any order: readers never take a record without its newline. */
    atomic_thread_fence(memory_order_release);
    *end = '\n';
    self->at += n + 1;
}

static PyObject *
cursor_put(Cursor *self, PyObject *record)
{
    Py_buffer rec;
    if (PyObject_GetBuffer(record, &rec, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (self->view.obj == NULL || rec.len + 1 > self->view.len - self->at) {
        PyBuffer_Release(&rec);
        Py_RETURN_FALSE;
    }
    memcpy((char *)self->view.buf + self->at, rec.buf, (size_t)rec.len);
    cursor_publish(self, rec.len);
    PyBuffer_Release(&rec);
    Py_RETURN_TRUE;
}

static PyObject *
cursor_get_tail(Cursor *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLongLong(self->base + (long long)self->at);
}

static PyObject *
cursor_get_free(Cursor *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->view.obj == NULL ? 0 : self->view.len - self->at);
}

static PyMethodDef cursor_methods[] = {
    {"map", (PyCFunction)cursor_map, METH_VARARGS,
     "map(window, base): write into window (a writable buffer at file offset base) from the tail."},
    {"unmap", (PyCFunction)cursor_unmap, METH_NOARGS,
     "unmap(): let go of the window (its mmap can then be closed); the tail is kept."},
    {"put", (PyCFunction)cursor_put, METH_O,
     "put(record) -> bool: copy the record and its newline in, or False if the window is too small."},
    {NULL}};

static PyGetSetDef cursor_getset[] = {
    {"tail", (getter)cursor_get_tail, NULL, "The file offset where the next record goes.", NULL},
    {"free", (getter)cursor_get_free, NULL, "Bytes left in the window.", NULL},
    {NULL}};

static PyTypeObject CursorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "isolane.worker._journal.Cursor",
    .tp_doc = PyDoc_STR("The window of a spool that records are copied into."),
    .tp_basicsize = sizeof(Cursor),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)cursor_init,
    .tp_dealloc = (destructor)cursor_dealloc,
    .tp_methods = cursor_methods,
    .tp_getset = cursor_getset,
};

/* ---- Journal ----------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Cursor *cursor;
    PyObject *prefix;   /* bytes: '{"v":1,"run_id":"…","seq":' */
    PyObject *needles;      /* the configured secrets as JSON writes them (bytes), or NULL: no screen */
    PyObject *text_needles; /* the same secrets as text (UTF-8): type_ and node_id are not JSON */
    PyObject *wake;     /* called when an event is committed and no doorbell is due yet */
    long long seq;
    Py_ssize_t max_record;
    Py_ssize_t need;
    int rung;
    int closed;
} Journal;

static int
journal_traverse(Journal *self, visitproc visit, void *arg)
{
    Py_VISIT(self->cursor);
    Py_VISIT(self->wake);
    Py_VISIT(self->needles);
    Py_VISIT(self->text_needles);
    return 0;
}

static int
journal_clear(Journal *self)
{
    Py_CLEAR(self->cursor);
    Py_CLEAR(self->prefix);
    Py_CLEAR(self->needles);
    Py_CLEAR(self->text_needles);
    Py_CLEAR(self->wake);
    return 0;
}

static void
journal_dealloc(Journal *self)
{
    PyObject_GC_UnTrack(self);
    journal_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
journal_init(Journal *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"cursor", "prefix", "seq", "needles", "wake", "max_record", NULL};
    PyObject *cursor, *prefix, *needles, *wake;
    long long seq;
    Py_ssize_t max_record;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!LOOn:Journal", kwlist, &CursorType, &cursor,
                                     &PyBytes_Type, &prefix, &seq, &needles, &wake, &max_record)) {
        return -1;
    }
    PyObject *in_json = NULL, *in_text = NULL;
    if (needles != Py_None) {
        if (!PyTuple_Check(needles) || PyTuple_GET_SIZE(needles) != 2
            || !PyTuple_Check(PyTuple_GET_ITEM(needles, 0))
            || !PyTuple_Check(PyTuple_GET_ITEM(needles, 1))) {
            PyErr_SetString(PyExc_TypeError,
                            "needles must be None or (secrets in JSON, secrets as text): two tuples");
            return -1;
        }
        in_json = PyTuple_GET_ITEM(needles, 0);
        in_text = PyTuple_GET_ITEM(needles, 1);
        for (int k = 0; k < 2; k++) {
            PyObject *group = k == 0 ? in_json : in_text;
            for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(group); i++) {
                PyObject *needle = PyTuple_GET_ITEM(group, i);
                if (!PyBytes_Check(needle) || PyBytes_GET_SIZE(needle) == 0) {
                    PyErr_SetString(PyExc_TypeError, "each needle must be non-empty bytes");
                    return -1;
                }
            }
        }
    }
    if (seq < 0 || max_record <= 0) {
        PyErr_SetString(PyExc_ValueError, "seq cannot be negative and max_record must be positive");
        return -1;
    }
    journal_clear(self);
    self->cursor = (Cursor *)Py_NewRef(cursor);
    self->prefix = Py_NewRef(prefix);
    self->needles = Py_XNewRef(in_json);
    self->text_needles = Py_XNewRef(in_text);
    self->wake = Py_NewRef(wake);
    self->seq = seq;
    self->max_record = max_record;
    self->need = 0;
    self->rung = 0;
    self->closed = 0;
    return 0;
}

/* Could this piece of a record hold a secret? The screen of isolane.schemas.redaction: a "sk-",
 * "bearer" in any case where a space or a tab (raw in text, escaped in JSON) is, or one of the
 * configured values (needles: as JSON writes them for the body, as text for type_ and node_id). */
static int
journal_screens(PyObject *needles, const char *s, Py_ssize_t n)
{
    const char *end = s + n;
    for (const char *p = s; (p = memchr(p, '-', (size_t)(end - p))) != NULL; p++) {
        if (p - s >= 2 && p[-2] == 's' && p[-1] == 'k') {
            return 1;
        }
    }
    if (memchr(s, ' ', (size_t)n) != NULL || memchr(s, '\\', (size_t)n) != NULL
        || memchr(s, '\t', (size_t)n) != NULL) {
        for (Py_ssize_t i = 0; i + 6 <= n; i++) {
            if ((s[i] | 0x20) == 'b' && (s[i + 1] | 0x20) == 'e' && (s[i + 2] | 0x20) == 'a'
                && (s[i + 3] | 0x20) == 'r' && (s[i + 4] | 0x20) == 'e' && (s[i + 5] | 0x20) == 'r') {
                return 1;
            }
        }
    }
    Py_ssize_t count = PyTuple_GET_SIZE(needles);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *needle = PyTuple_GET_ITEM(needles, i);
        if (memmem(s, (size_t)n, PyBytes_AS_STRING(needle), (size_t)PyBytes_GET_SIZE(needle))) {
            return 1;
        }
    }
    return 0;
}

/* The length of s (UTF-8) as a JSON string, quotes included; escapes as orjson writes them. */
static Py_ssize_t
json_string_len(const char *s, Py_ssize_t n)
{
    Py_ssize_t len = n + 2;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            len += 1;
        } else if (c < 0x20) {
            len += (c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f') ? 1 : 5;
        }
    }
    return len;
}

static char *
json_string_put(char *p, const char *s, Py_ssize_t n)
{
    static const char hex[] = "0123456789abcdef";
    *p++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *p++ = (char)c;
            continue;
        }
        *p++ = '\\';
        switch (c) {
        case '"': *p++ = '"'; break;
        case '\\': *p++ = '\\'; break;
        case '\n': *p++ = 'n'; break;
        case '\r': *p++ = 'r'; break;
        case '\t': *p++ = 't'; break;
        case '\b': *p++ = 'b'; break;
        case '\f': *p++ = 'f'; break;
        default:
            *p++ = 'u'; *p++ = '0'; *p++ = '0';
            *p++ = hex[c >> 4]; *p++ = hex[c & 0xF];
        }
    }
    *p++ = '"';
    return p;
}

/* Decimal digits of v (v >= 0) into buf, most significant first; returns their count. */
static int
put_digits(char *buf, unsigned long long v, int min_digits)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n < min_digits) {
        tmp[n++] = '0';
    }
    for (int i = 0; i < n; i++) {
        buf[i] = tmp[n - 1 - i];
    }
    return n;
}

#define LIT(p, s) (memcpy((p), (s), sizeof(s) - 1), (p) + sizeof(s) - 1)

static PyObject *
journal_commit(Journal *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 3 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "commit(type_, node_id, body, screened=False)");
        return NULL;
    }
    PyObject *type_ = args[0], *node_id = args[1], *body = args[2];
    int screened = nargs == 4 ? PyObject_IsTrue(args[3]) : 0;
    if (screened < 0) {
        return NULL;
    }
    if (!PyBytes_Check(body)) {
        PyErr_SetString(PyExc_TypeError, "body must be bytes (the event's data, encoded)");
        return NULL;
    }
    if (self->closed) {
        return PyLong_FromLong(CLOSED);
    }
    Py_ssize_t type_len, node_len = 0;
    const char *type_s = NULL, *node_s = NULL;
    if (!PyUnicode_Check(type_) || (node_id != Py_None && !PyUnicode_Check(node_id))) {
        return PyLong_FromLong(UNSUPPORTED);
    }
    type_s = PyUnicode_AsUTF8AndSize(type_, &type_len);
    if (type_s != NULL && node_id != Py_None) {
        node_s = PyUnicode_AsUTF8AndSize(node_id, &node_len);
    }
    if (type_s == NULL || (node_id != Py_None && node_s == NULL)) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            return NULL; /* out of memory: raised as it is */
        }
        PyErr_Clear(); /* a lone surrogate: not UTF-8 */
        return PyLong_FromLong(UNSUPPORTED);
    }
    const char *body_s = PyBytes_AS_STRING(body);
    Py_ssize_t body_len = PyBytes_GET_SIZE(body);
    if (self->needles != NULL && !screened
        && (journal_screens(self->needles, body_s, body_len)
            || journal_screens(self->text_needles, type_s, type_len)
            || (node_s != NULL && journal_screens(self->text_needles, node_s, node_len)))) {
        return PyLong_FromLong(REDACT);
    }

    char seq_buf[24], ts_buf[48];
    long long seq = self->seq + 1;
    int seq_len = put_digits(seq_buf, (unsigned long long)seq, 1);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int ts_len = put_digits(ts_buf, (unsigned long long)now.tv_sec, 1);
    ts_buf[ts_len++] = '.';
    ts_len += put_digits(ts_buf + ts_len, (unsigned long long)(now.tv_nsec / 100), 7);

    Py_ssize_t type_json = json_string_len(type_s, type_len);
    Py_ssize_t node_json = node_s == NULL ? 4 : json_string_len(node_s, node_len);
    Py_ssize_t size = PyBytes_GET_SIZE(self->prefix) + seq_len + (Py_ssize_t)sizeof(",\"ts\":") - 1
                      + ts_len + (Py_ssize_t)sizeof(",\"type\":") - 1 + type_json
                      + (Py_ssize_t)sizeof(",\"node_id\":") - 1 + node_json
                      + (Py_ssize_t)sizeof(",\"data\":") - 1 + body_len + 1;
    if (size > self->max_record) {
        self->need = size;
        return PyLong_FromLong(TOO_LARGE);
    }
    Cursor *cursor = self->cursor;
    if (cursor->view.obj == NULL || size + 1 > cursor->view.len - cursor->at) {
        self->need = size + 1;
        return PyLong_FromLong(NO_ROOM);
    }
    char *start = (char *)cursor->view.buf + cursor->at, *p = start;
    memcpy(p, PyBytes_AS_STRING(self->prefix), (size_t)PyBytes_GET_SIZE(self->prefix));
    p += PyBytes_GET_SIZE(self->prefix);
    memcpy(p, seq_buf, (size_t)seq_len);
    p += seq_len;
    p = LIT(p, ",\"ts\":");
    memcpy(p, ts_buf, (size_t)ts_len);
    p += ts_len;
    p = LIT(p, ",\"type\":");
    p = json_string_put(p, type_s, type_len);
    p = LIT(p, ",\"node_id\":");
    p = node_s == NULL ? LIT(p, "null") : json_string_put(p, node_s, node_len);
    p = LIT(p, ",\"data\":");
    memcpy(p, body_s, (size_t)body_len);
    p += body_len;
    *p++ = '}';
    cursor_publish(cursor, p - start);
    self->seq = seq;

    if (!self->rung) {
        self->rung = 1;
        PyObject *result = PyObject_CallNoArgs(self->wake);
        if (result == NULL) { /* the event is committed: a failed wake-up must not undo that */
            PyErr_WriteUnraisable(self->wake);
        }
        Py_XDECREF(result);
    }
    return PyLong_FromLongLong(seq);
}

static PyObject *
journal_take(Journal *self, PyObject *Py_UNUSED(ignored))
{
    int rung = self->rung;
    self->rung = 0;
    return Py_BuildValue("(OL)", rung ? Py_True : Py_False,
                         self->cursor->base + (long long)self->cursor->at);
}

static PyObject *
journal_close(Journal *self, PyObject *Py_UNUSED(ignored))
{
    self->closed = 1;
    Py_RETURN_NONE;
}

static PyObject *
journal_get_seq(Journal *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLongLong(self->seq);
}

static PyObject *
journal_get_need(Journal *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->need);
}

static PyObject *
journal_get_rung(Journal *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->rung);
}

static PyObject *
journal_get_closed(Journal *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->closed);
}

static PyMethodDef journal_methods[] = {
    {"commit", (PyCFunction)(void (*)(void))journal_commit, METH_FASTCALL,
     "commit(type_, node_id, body, screened=False) -> seq, or a code (REDACT, NO_ROOM, ...)."},
    {"take", (PyCFunction)journal_take, METH_NOARGS,
     "take() -> (rung, tail): whether a doorbell is due (and clear it), and the tail."},
    {"close", (PyCFunction)journal_close, METH_NOARGS, "close(): commit() returns CLOSED from now."},
    {NULL}};

static PyGetSetDef journal_getset[] = {
    {"seq", (getter)journal_get_seq, NULL, "The seq of the last event committed.", NULL},
    {"need", (getter)journal_get_need, NULL, "Bytes the last NO_ROOM or TOO_LARGE record needed.",
     NULL},
    {"rung", (getter)journal_get_rung, NULL, "A doorbell is due (wake() was called for it).", NULL},
    {"closed", (getter)journal_get_closed, NULL, "close() was called.", NULL},
    {NULL}};

static PyTypeObject JournalType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "isolane.worker._journal.Journal",
    .tp_doc = PyDoc_STR("Where an event gets its seq and its place in the spool."),
    .tp_basicsize = sizeof(Journal),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)journal_init,
    .tp_dealloc = (destructor)journal_dealloc,
    .tp_traverse = (traverseproc)journal_traverse,
    .tp_clear = (inquiry)journal_clear,
    .tp_methods = journal_methods,
    .tp_getset = journal_getset,
};

/* ---- module ------------------------------------------------------------------------------ */

static struct PyModuleDef journal_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "isolane.worker._journal",
    .m_doc = PyDoc_STR("The compiled Cursor and Journal of isolane.worker.journal."),
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__journal(void)
{
    if (PyType_Ready(&CursorType) < 0 || PyType_Ready(&JournalType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&journal_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "Cursor", (PyObject *)&CursorType) < 0
        || PyModule_AddObjectRef(module, "Journal", (PyObject *)&JournalType) < 0
        || PyModule_AddIntConstant(module, "REDACT", REDACT) < 0
        || PyModule_AddIntConstant(module, "NO_ROOM", NO_ROOM) < 0
        || PyModule_AddIntConstant(module, "CLOSED", CLOSED) < 0
        || PyModule_AddIntConstant(module, "TOO_LARGE", TOO_LARGE) < 0
        || PyModule_AddIntConstant(module, "UNSUPPORTED", UNSUPPORTED) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
