/*
 * floor.c - shmchat's design in lean C: the floor of the chat benchmark.
 *
 * This is NOT a second server to use.  It exists so that bench/chat.py can
 * tell how much of shmchat's time is the design itself (a worker process per
 * client, System V shared memory, semaphores, eventfd doorbells) and how much
 * is Python.  It does what shmchat does on the paths the benchmark drives, and
 * nothing else:
 *
 *   - a parent binds 127.0.0.1:PORT and, before any fork, creates every IPC
 *     object: the client table and the message table (System V segments,
 *     shmget/shmat), two System V semaphores used as locks (taken with
 *     SEM_UNDO, so a worker killed while holding one does not wedge the
 *     others), and one eventfd "doorbell" per client slot;
 *   - one forked worker per client; the worker reads its socket, posts every
 *     line of one read into the receivers' mailboxes under ONE hold of the
 *     messages lock, then rings each receiver's doorbell once;
 *   - a worker whose doorbell rings takes its mail under the lock, renders it
 *     and writes its own socket;
 *   - a full mailbox stops the sender from reading its socket (TCP slows the
 *     client down) until the receiver, having taken its mail, rings back;
 *   - the parent learns of dead workers through a signalfd (SIGCHLD), frees
 *     the slot and tells the others; SIGTERM/SIGINT kill and reap every
 *     worker and remove every segment and semaphore (IPC_RMID).
 *
 * Wire dialect: shmchat's (protocol/replies.py), only what the benchmark
 * uses: the welcome line, "Connection Limit Exceeded !!", /send <id> <text>,
 * /broadcast <text>, /quit (or EXIT), join and leave notices.
 *
 * Usage:  floor PORT [MAX_CLIENTS]     (PORT 0: any free port)
 * It prints "floor listening on 127.0.0.1:PORT" once it is ready.
 *
 * The IPC keys are  0xF10 << 20 | port << 4 | index  so that a test can
 * check with ipcs (or /proc/sysvipc) that nothing was left behind.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ipc.h>
#include <sys/prctl.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- sizes -------------------------------------------------------------- */

#define MAX_SLOTS 256              /* the waiters bitmap below has 256 bits  */
#define MAILBOX_BYTES (256 * 1024) /* ring bytes per slot, as shmchat's      */
#define RECV_BYTES (256 * 1024)    /* one read from a client socket          */
#define MAX_LINE (64 * 1024)       /* longest line kept                      */
#define MAX_POSTINGS 2048          /* postings gathered before a flush        */
#define ARENA_BYTES (1024 * 1024)  /* packed records of one batch             */
#define OUTPUT_LIMIT (8 * 1024 * 1024) /* unread output before a disconnect  */

/* Worker exit statuses, as shmchat's WorkerExit: the parent words the notice. */
#define EXIT_QUIT 0
#define EXIT_LOST 3
#define EXIT_TOO_SLOW 4

/* ---- the shared tables ---------------------------------------------------- */

/* The client table: a header, then one row per slot (guarded by the
 * directory lock).  `epoch` moves whenever a slot is claimed or freed, so a
 * worker can keep its own copy of the table and re-read it only then. */
struct client_row {
    uint32_t online;     /* 1 while a client holds the slot */
    uint32_t id;         /* its 5-digit id                  */
    uint32_t generation; /* bumped each time the slot is reused */
    int32_t pid;         /* its worker                      */
};
struct client_table {
    uint32_t epoch;
    uint32_t capacity;
    struct client_row rows[MAX_SLOTS];
};

/* One mailbox per slot in the message table (guarded by the messages lock):
 * a ring of variable-length records.  head and tail count bytes ever
 * consumed and produced, so tail - head is what is pending. */
struct mailbox {
    uint64_t head, tail;
    uint32_t generation; /* posts name the generation they are meant for */
    uint32_t open;       /* 0 once its client has left: posts are GONE   */
    uint8_t waiters[MAX_SLOTS / 8]; /* senders that found it full        */
    unsigned char ring[MAILBOX_BYTES];
};

/* A record in a ring: this header, then `size - sizeof header` bytes of text. */
enum { KIND_PRIVATE = 1, KIND_BROADCAST = 2, KIND_NOTICE = 3 };
struct record_header {
    uint32_t size; /* header included */
    uint32_t kind;
    uint32_t sender_id;
    uint32_t sender_slot;
};

/* ---- state of this process -------------------------------------------------- */

static int capacity;                 /* --max-clients                     */
static int port;
static int shm_clients = -1, shm_messages = -1, sem_locks = -1;
static struct client_table *clients; /* attached before fork: shared    */
static struct mailbox *mailboxes;
static int doorbell[MAX_SLOTS];      /* eventfds, made before fork        */
static pid_t worker_pid[MAX_SLOTS];  /* parent: who serves each slot      */

enum { DIRECTORY_LOCK = 0, MESSAGES_LOCK = 1 };

static pid_t parent_pid; /* only the parent removes the IPC objects */

/* A fatal error.  A worker leaves with _exit so that it cannot run the
 * parent's atexit clean-up (it inherited it with the fork). */
static void die(const char *what) {
    perror(what);
    if (getpid() != parent_pid) _exit(EXIT_LOST);
    exit(1);
}

static key_t ipc_key(int index) { return (key_t)((0xF10u << 20) | ((unsigned)port << 4) | (unsigned)index); }

/* ---- locks and doorbells -------------------------------------------------- */

/* P and V on one semaphore.  SEM_UNDO: the kernel gives the unit back if this
 * process dies holding it.  EINTR (a signal arrived) means "try again". */
static void sem_change(int which, int delta) {
    struct sembuf op = {.sem_num = (unsigned short)which, .sem_op = (short)delta, .sem_flg = SEM_UNDO};
    while (semop(sem_locks, &op, 1) < 0) {
        if (errno != EINTR) die("semop");
    }
}
static void lock(int which) { sem_change(which, -1); }
static void unlock(int which) { sem_change(which, +1); }

static void ring(int slot) {
    uint64_t one = 1;
    if (write(doorbell[slot], &one, sizeof one) < 0 && errno != EAGAIN) perror("doorbell");
}

/* ---- posting: append packed records to rings ---------------------------------- */

enum post_result { DELIVERED, GONE, FULL };

/* Copy one packed record into `slot`'s ring (caller holds the messages lock).
 * `tail` is stored last: it is what makes the record visible. */
static enum post_result post_one(int slot, uint32_t generation, int sender_slot, const void *data, uint32_t size) {
    struct mailbox *box = &mailboxes[slot];
    if (!box->open || box->generation != generation) return GONE;
    if (box->tail - box->head + size > MAILBOX_BYTES) {
        if (sender_slot >= 0) box->waiters[sender_slot / 8] |= (uint8_t)(1u << (sender_slot % 8));
        return FULL;
    }
    size_t offset = box->tail % MAILBOX_BYTES;
    size_t first = size < MAILBOX_BYTES - offset ? size : MAILBOX_BYTES - offset;
    memcpy(box->ring + offset, data, first);
    memcpy(box->ring, (const char *)data + first, size - first); /* the wrapped part, often 0 bytes */
    box->tail += size;
    return DELIVERED;
}

/* ---- the worker's copy of the client table ------------------------------------- */

static struct client_row cached[MAX_SLOTS];
static uint32_t cached_epoch = UINT32_MAX;

/* Re-read the table only when its epoch has moved (a client came or went). */
static void refresh_clients(void) {
    if (__atomic_load_n(&clients->epoch, __ATOMIC_ACQUIRE) == cached_epoch) return;
    lock(DIRECTORY_LOCK);
    memcpy(cached, clients->rows, sizeof(struct client_row) * (size_t)capacity);
    cached_epoch = clients->epoch;
    unlock(DIRECTORY_LOCK);
}

static int find_slot(uint32_t id) {
    for (int s = 0; s < capacity; s++)
        if (cached[s].online && cached[s].id == id) return s;
    return -1;
}

/* ---- a growable output buffer ----------------------------------------------------- */

struct buffer {
    char *data;
    size_t len, cap;
};

static void put(struct buffer *b, const void *bytes, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        while (cap < b->len + n) cap *= 2;
        b->data = realloc(b->data, cap);
        if (!b->data) die("realloc");
        b->cap = cap;
    }
    memcpy(b->data + b->len, bytes, n);
    b->len += n;
}

static void put_text(struct buffer *b, const char *text) { put(b, text, strlen(text)); }

/* ---- the worker ------------------------------------------------------------------ */

/* One record to post: where it goes, and where its packed bytes are. */
struct posting {
    int slot;
    uint32_t generation;
    uint32_t offset, size; /* in the arena */
    uint32_t target_id;    /* for the "disconnected" answer of a private message */
};

static struct {
    int slot, sock, epoll;
    uint32_t id, generation;
    struct buffer out;
    char *in;       /* bytes read and not yet handled */
    size_t in_len;
    char *arena;    /* this batch's packed records */
    size_t arena_len;
    struct posting postings[MAX_POSTINGS];
    int npostings;
    int blocked;    /* a post found a full mailbox: stop reading */
    int reading;    /* EPOLLIN is armed on the socket */
    int writing;    /* EPOLLOUT is armed */
    unsigned char mail[MAILBOX_BYTES];
} w;

/* Pack one record into the arena; return its offset there. */
static uint32_t pack(uint32_t kind, const char *text, size_t len) {
    struct record_header h = {(uint32_t)(sizeof h + len), kind, w.id, (uint32_t)w.slot};
    uint32_t at = (uint32_t)w.arena_len;
    memcpy(w.arena + w.arena_len, &h, sizeof h);
    memcpy(w.arena + w.arena_len + sizeof h, text, len);
    w.arena_len += sizeof h + len;
    return at;
}

static void add_posting(int slot, uint32_t offset, uint32_t target_id) {
    struct record_header *h = (struct record_header *)(w.arena + offset);
    w.postings[w.npostings++] =
        (struct posting){slot, cached[slot].generation, offset, h->size, target_id};
}

/* Post everything gathered, under one hold of the messages lock; ring each
 * receiver once.  What found a full mailbox stays, in order, and the worker
 * is `blocked` until that receiver rings back. */
static void flush(void) {
    static uint8_t rung[MAX_SLOTS], full[MAX_SLOTS];
    int kept = 0;
    if (w.npostings == 0) {
        w.blocked = 0;
        return;
    }
    memset(full, 0, sizeof full);
    lock(MESSAGES_LOCK);
    for (int i = 0; i < w.npostings; i++) {
        struct posting *p = &w.postings[i];
        /* Once a mailbox is full, later posts to it wait too: order is kept. */
        enum post_result r = full[p->slot] ? FULL : post_one(p->slot, p->generation, w.slot, w.arena + p->offset, p->size);
        if (r == DELIVERED) {
            rung[p->slot] = 1;
        } else if (r == FULL) {
            full[p->slot] = 1;
            w.postings[kept++] = *p;
        } else if (p->target_id) { /* GONE: tell the sender of a private message */
            char line[96];
            snprintf(line, sizeof line, "[error] client %u disconnected; message discarded\n", p->target_id);
            put_text(&w.out, line);
        }
    }
    unlock(MESSAGES_LOCK);
    for (int s = 0; s < capacity; s++) {
        if (rung[s]) {
            rung[s] = 0;
            ring(s);
        }
    }
    w.npostings = kept;
    w.blocked = kept > 0;
    if (!kept) w.arena_len = 0; /* every record is out: the arena is free again */
}

/* Parse a 5-digit id followed by one space, as shmchat's fast path does. */
static int parse_id(const char *s, size_t len, uint32_t *id) {
    if (len < 7 || s[5] != ' ') return 0;
    uint32_t v = 0;
    for (int i = 0; i < 5; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        v = v * 10 + (uint32_t)(s[i] - '0');
    }
    *id = v;
    return v >= 10000;
}

/* Handle one line (no newline).  Returns 0 if it must wait for room in the
 * batch (the caller flushes and, unless blocked, tries again). */
static int handle_line(const char *line, size_t len) {
    char reply[160];
    if (len && line[len - 1] == '\r') len--;
    if (len > 6 && memcmp(line, "/send ", 6) == 0) {
        uint32_t target;
        if (!parse_id(line + 6, len - 6, &target)) {
            put_text(&w.out, "[error] /send: usage: /send <client id> <message>\n");
            return 1;
        }
        if (w.npostings + 1 > MAX_POSTINGS || w.arena_len + len + 64 > ARENA_BYTES) return 0;
        refresh_clients();
        int slot = find_slot(target);
        if (target == w.id) {
            snprintf(reply, sizeof reply, "[error] %u is your own id; pick another client\n", target);
            put_text(&w.out, reply);
        } else if (slot < 0) {
            snprintf(reply, sizeof reply, "[error] client %u is offline; message discarded\n", target);
            put_text(&w.out, reply);
        } else {
            add_posting(slot, pack(KIND_PRIVATE, line + 12, len - 12), target);
        }
        return 1;
    }
    if (len > 11 && memcmp(line, "/broadcast ", 11) == 0) {
        if (w.npostings + capacity > MAX_POSTINGS || w.arena_len + len + 64 > ARENA_BYTES) return 0;
        refresh_clients();
        uint32_t offset = UINT32_MAX; /* one packed record for every receiver */
        for (int s = 0; s < capacity; s++) {
            if (!cached[s].online || s == w.slot) continue;
            if (offset == UINT32_MAX) offset = pack(KIND_BROADCAST, line + 11, len - 11);
            add_posting(s, offset, 0);
        }
        if (offset == UINT32_MAX) put_text(&w.out, "[server] nobody else is online; broadcast not sent\n");
        return 1;
    }
    if ((len == 5 && memcmp(line, "/quit", 5) == 0) || (len == 4 && memcmp(line, "EXIT", 4) == 0)) {
        flush();
        snprintf(reply, sizeof reply, "[bye] goodbye, %u\n", w.id);
        put_text(&w.out, reply);
        /* A last blocking write of what is queued, then leave. */
        for (size_t done = 0; done < w.out.len;) {
            ssize_t n = send(w.sock, w.out.data + done, w.out.len - done, MSG_NOSIGNAL);
            if (n < 0 && errno == EAGAIN) {
                struct epoll_event ev;
                epoll_wait(w.epoll, &ev, 1, 1000);
                continue;
            }
            if (n <= 0) break;
            done += (size_t)n;
        }
        shutdown(w.sock, SHUT_RDWR);
        _exit(EXIT_QUIT);
    }
    put_text(&w.out, "[error] the floor knows only /send, /broadcast and /quit\n");
    return 1;
}

/* Handle every complete line read so far, then post the batch. */
static void process_input(void) {
    size_t start = 0;
    while (!w.blocked) {
        char *nl = memchr(w.in + start, '\n', w.in_len - start);
        if (!nl) break;
        size_t len = (size_t)(nl - (w.in + start));
        if (!handle_line(w.in + start, len)) {
            flush(); /* the batch is full: post it, then try the line again */
            continue;
        }
        start += len + 1;
    }
    flush();
    memmove(w.in, w.in + start, w.in_len - start);
    w.in_len -= start;
    if (w.in_len > MAX_LINE && !memchr(w.in, '\n', w.in_len)) w.in_len = 0; /* over-long line: dropped */
}

/* Take every pending record of our own mailbox, under the lock; render them
 * after releasing it; ring the senders that were waiting for room. */
static void take_mail(void) {
    struct mailbox *box = &mailboxes[w.slot];
    uint8_t waiters[MAX_SLOTS / 8];
    size_t pending = 0;
    lock(MESSAGES_LOCK);
    if (box->generation == w.generation && box->tail != box->head) {
        pending = (size_t)(box->tail - box->head);
        size_t offset = box->head % MAILBOX_BYTES;
        size_t first = pending < MAILBOX_BYTES - offset ? pending : MAILBOX_BYTES - offset;
        memcpy(w.mail, box->ring + offset, first);
        memcpy(w.mail + first, box->ring, pending - first);
        box->head = box->tail; /* the bytes are free again */
    }
    memcpy(waiters, box->waiters, sizeof waiters);
    memset(box->waiters, 0, sizeof waiters);
    unlock(MESSAGES_LOCK);
    for (int s = 0; s < MAX_SLOTS; s++)
        if (waiters[s / 8] & (1u << (s % 8))) ring(s);
    for (size_t at = 0; at + sizeof(struct record_header) <= pending;) {
        struct record_header h;
        memcpy(&h, w.mail + at, sizeof h);
        const char *text = (const char *)w.mail + at + sizeof h;
        size_t len = h.size - sizeof h;
        char tag[48];
        int n = 0;
        if (h.kind == KIND_PRIVATE) n = snprintf(tag, sizeof tag, "[msg from %u] ", h.sender_id);
        if (h.kind == KIND_BROADCAST) n = snprintf(tag, sizeof tag, "[broadcast from %u] ", h.sender_id);
        put(&w.out, tag, (size_t)n);
        put(&w.out, text, len);
        put(&w.out, "\n", 1);
        at += h.size;
    }
}

/* Write what the socket takes now; the rest waits for EPOLLOUT. */
static void write_some(void) {
    while (w.out.len) {
        ssize_t n = send(w.sock, w.out.data, w.out.len, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
        if (n < 0) _exit(EXIT_LOST);
        memmove(w.out.data, w.out.data + n, w.out.len - (size_t)n);
        w.out.len -= (size_t)n;
    }
    if (w.out.len > OUTPUT_LIMIT) _exit(EXIT_TOO_SLOW);
}

/* Arm EPOLLIN only while not blocked, EPOLLOUT only while output waits. */
static void update_interest(void) {
    int reading = !w.blocked, writing = w.out.len > 0;
    if (reading == w.reading && writing == w.writing) return;
    struct epoll_event ev = {.events = (reading ? EPOLLIN : 0) | (writing ? EPOLLOUT : 0), .data.fd = w.sock};
    if (epoll_ctl(w.epoll, EPOLL_CTL_MOD, w.sock, &ev) < 0) die("epoll_ctl");
    w.reading = reading;
    w.writing = writing;
}

static void run_worker(int slot, int sock) {
    w.slot = slot;
    w.sock = sock;
    w.id = clients->rows[slot].id;
    w.generation = clients->rows[slot].generation;
    w.in = malloc(RECV_BYTES + MAX_LINE + 1);
    w.arena = malloc(ARENA_BYTES);
    if (!w.in || !w.arena) die("malloc");
    int one = 1;
    setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) | O_NONBLOCK) < 0) die("fcntl");

    w.epoll = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = sock};
    epoll_ctl(w.epoll, EPOLL_CTL_ADD, sock, &ev);
    ev.data.fd = doorbell[slot];
    epoll_ctl(w.epoll, EPOLL_CTL_ADD, doorbell[slot], &ev);
    w.reading = 1;

    refresh_clients();
    int online = 0;
    for (int s = 0; s < capacity; s++) online += cached[s].online != 0;
    char line[200];
    if (online <= 1)
        snprintf(line, sizeof line, "[welcome] Welcome to shmchat! Your unique id is %u; you are the only one here. Type /help for the commands.\n", w.id);
    else
        snprintf(line, sizeof line, "[welcome] Welcome to shmchat! Your unique id is %u; %d other(s) online. Type /help for the commands.\n", w.id, online - 1);
    put_text(&w.out, line);
    take_mail();

    for (;;) {
        write_some();
        update_interest();
        struct epoll_event events[2];
        int n = epoll_wait(w.epoll, events, 2, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            if (events[i].data.fd == doorbell[slot]) {
                uint64_t count;
                if (read(doorbell[slot], &count, sizeof count) < 0 && errno != EAGAIN) die("read doorbell");
                take_mail();
                if (w.blocked) { /* the mailbox we waited for may have room now */
                    flush();
                    if (!w.blocked) process_input(); /* lines left behind while blocked */
                }
                continue;
            }
            if (events[i].events & (EPOLLHUP | EPOLLERR) && w.blocked) _exit(EXIT_LOST); /* else it spins */
            if (events[i].events & EPOLLOUT) write_some();
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR) && !w.blocked) {
                ssize_t got = recv(sock, w.in + w.in_len, RECV_BYTES, 0);
                if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                if (got <= 0) _exit(EXIT_LOST);
                w.in_len += (size_t)got;
                process_input();
            }
        }
    }
}

/* ---- the parent ------------------------------------------------------------------- */

/* Post the same notice line to every online client but `except` (the parent
 * holds no slot, so a full mailbox just misses the notice: the benchmark
 * drains notices and never fills a mailbox with them). */
static void notify_all(int except, const char *text) {
    struct record_header h = {(uint32_t)(sizeof h + strlen(text)), KIND_NOTICE, 0, UINT32_MAX};
    static unsigned char packed[256];
    memcpy(packed, &h, sizeof h);
    memcpy(packed + sizeof h, text, strlen(text));
    uint8_t rung[MAX_SLOTS] = {0};
    lock(DIRECTORY_LOCK);
    struct client_row rows[MAX_SLOTS];
    memcpy(rows, clients->rows, sizeof(struct client_row) * (size_t)capacity);
    unlock(DIRECTORY_LOCK);
    lock(MESSAGES_LOCK);
    for (int s = 0; s < capacity; s++)
        if (rows[s].online && s != except && post_one(s, rows[s].generation, -1, packed, h.size) == DELIVERED)
            rung[s] = 1;
    unlock(MESSAGES_LOCK);
    for (int s = 0; s < capacity; s++)
        if (rung[s]) ring(s);
}

/* A new connection: claim a slot and a unique id, open its mailbox, tell the
 * others, fork its worker. */
static void admit(int sock, int listener, int sigfd, int epoll_fd) {
    int slot = -1;
    uint32_t id = 0;
    lock(DIRECTORY_LOCK);
    for (int s = 0; s < capacity && slot < 0; s++)
        if (!clients->rows[s].online) slot = s;
    if (slot >= 0) {
        for (int unique = 0; !unique;) { /* a random 5-digit id nobody online has */
            id = 10000 + (uint32_t)(random() % 90000);
            unique = 1;
            for (int s = 0; s < capacity; s++)
                if (clients->rows[s].online && clients->rows[s].id == id) unique = 0;
        }
        struct client_row *row = &clients->rows[slot];
        row->online = 1;
        row->id = id;
        row->generation++;
        __atomic_store_n(&clients->epoch, clients->epoch + 1, __ATOMIC_RELEASE);
    }
    unlock(DIRECTORY_LOCK);
    if (slot < 0) {
        const char *refusal = "Connection Limit Exceeded !!\n";
        (void)!send(sock, refusal, strlen(refusal), MSG_NOSIGNAL | MSG_DONTWAIT);
        shutdown(sock, SHUT_RDWR);
        close(sock);
        return;
    }
    struct mailbox *box = &mailboxes[slot];
    lock(MESSAGES_LOCK);
    box->head = box->tail = 0;
    box->generation = clients->rows[slot].generation;
    memset(box->waiters, 0, sizeof box->waiters);
    box->open = 1;
    unlock(MESSAGES_LOCK);
    char text[64];
    snprintf(text, sizeof text, "[server] client %u joined", id);
    notify_all(slot, text); /* before the fork: the newcomer cannot see its own arrival */

    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        sigset_t all;
        sigfillset(&all);
        sigprocmask(SIG_UNBLOCK, &all, NULL); /* the parent blocked them for its signalfd */
        prctl(PR_SET_PDEATHSIG, SIGKILL);     /* die with the parent */
        close(listener);
        close(sigfd);
        close(epoll_fd);
        run_worker(slot, sock);
    }
    close(sock);
    worker_pid[slot] = pid;
    lock(DIRECTORY_LOCK);
    clients->rows[slot].pid = pid;
    unlock(DIRECTORY_LOCK);
}

/* A worker ended: free its slot, close its mailbox, tell the others. */
static void departed(int slot, int status) {
    uint32_t id = clients->rows[slot].id;
    worker_pid[slot] = 0;
    lock(DIRECTORY_LOCK);
    clients->rows[slot].online = 0;
    clients->rows[slot].pid = 0;
    __atomic_store_n(&clients->epoch, clients->epoch + 1, __ATOMIC_RELEASE);
    unlock(DIRECTORY_LOCK);
    uint8_t waiters[MAX_SLOTS / 8];
    lock(MESSAGES_LOCK);
    mailboxes[slot].open = 0; /* from now on every post to it is GONE */
    memcpy(waiters, mailboxes[slot].waiters, sizeof waiters);
    memset(mailboxes[slot].waiters, 0, sizeof waiters);
    unlock(MESSAGES_LOCK);
    for (int s = 0; s < MAX_SLOTS; s++) /* they retry, and learn the receiver is gone */
        if (waiters[s / 8] & (1u << (s % 8))) ring(s);
    const char *how = "disconnected (connection lost)";
    if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_QUIT) how = "left";
    if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_TOO_SLOW) how = "was disconnected (it stopped reading its messages)";
    if (WIFSIGNALED(status)) how = "disconnected (its worker process died)";
    char text[128];
    snprintf(text, sizeof text, "[server] client %u %s", id, how);
    notify_all(-1, text);
}

static void reap(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int s = 0; s < capacity; s++)
            if (worker_pid[s] == pid) departed(s, status);
    }
}

/* Remove every System V object (also on the way out of a failed start). */
static void remove_ipc(void) {
    if (getpid() != parent_pid) return;
    if (clients) shmdt(clients);
    if (mailboxes) shmdt(mailboxes);
    if (shm_clients >= 0) shmctl(shm_clients, IPC_RMID, NULL);
    if (shm_messages >= 0) shmctl(shm_messages, IPC_RMID, NULL);
    if (sem_locks >= 0) semctl(sem_locks, 0, IPC_RMID);
    clients = NULL;
    mailboxes = NULL;
    shm_clients = shm_messages = sem_locks = -1;
}

static void create_ipc(void) {
    atexit(remove_ipc);
    shm_clients = shmget(ipc_key(0), sizeof(struct client_table), IPC_CREAT | IPC_EXCL | 0600);
    if (shm_clients < 0) die("shmget clients");
    shm_messages = shmget(ipc_key(1), sizeof(struct mailbox) * (size_t)capacity, IPC_CREAT | IPC_EXCL | 0600);
    if (shm_messages < 0) die("shmget messages");
    sem_locks = semget(ipc_key(2), 2, IPC_CREAT | IPC_EXCL | 0600);
    if (sem_locks < 0) die("semget");
    unsigned short ones[2] = {1, 1}; /* both locks start free */
    if (semctl(sem_locks, 0, SETALL, ones) < 0) die("semctl SETALL");
    clients = shmat(shm_clients, NULL, 0); /* fresh segments are zero-filled */
    mailboxes = shmat(shm_messages, NULL, 0);
    if (clients == (void *)-1 || mailboxes == (void *)-1) die("shmat");
    clients->capacity = (uint32_t)capacity;
    for (int s = 0; s < capacity; s++) {
        doorbell[s] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (doorbell[s] < 0) die("eventfd");
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [MAX_CLIENTS]\n", argv[0]);
        return 2;
    }
    capacity = argc > 2 ? atoi(argv[2]) : 5;
    if (capacity < 1 || capacity > MAX_SLOTS) {
        fprintf(stderr, "MAX_CLIENTS must be 1-%d\n", MAX_SLOTS);
        return 2;
    }
    parent_pid = getpid();
    srandom((unsigned)time(NULL) ^ (unsigned)parent_pid);

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(listener, 128) < 0) die("listen");
    socklen_t addr_len = sizeof addr;
    getsockname(listener, (struct sockaddr *)&addr, &addr_len);
    port = ntohs(addr.sin_port);
    create_ipc();

    /* Signals arrive as reads on a signalfd: block them, then watch the fd. */
    sigset_t watched;
    sigemptyset(&watched);
    sigaddset(&watched, SIGCHLD);
    sigaddset(&watched, SIGTERM);
    sigaddset(&watched, SIGINT);
    sigprocmask(SIG_BLOCK, &watched, NULL);
    int sigfd = signalfd(-1, &watched, SFD_NONBLOCK | SFD_CLOEXEC);
    int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (sigfd < 0 || epoll_fd < 0) die("signalfd/epoll");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listener, &ev);
    ev.data.fd = sigfd;
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, sigfd, &ev);

    printf("floor listening on 127.0.0.1:%d\n", port);
    fflush(stdout);

    for (int stopping = 0; !stopping;) {
        struct epoll_event events[2];
        int n = epoll_wait(epoll_fd, events, 2, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            if (events[i].data.fd == listener) {
                int sock;
                while ((sock = accept4(listener, NULL, NULL, SOCK_CLOEXEC)) >= 0)
                    admit(sock, listener, sigfd, epoll_fd);
                continue;
            }
            struct signalfd_siginfo info;
            while (read(sigfd, &info, sizeof info) == sizeof info) {
                if (info.ssi_signo == SIGTERM || info.ssi_signo == SIGINT) stopping = 1;
            }
            if (!stopping) reap();
        }
    }
    /* Shutdown: stop every worker, reap it, then remove the IPC objects. */
    for (int s = 0; s < capacity; s++)
        if (worker_pid[s] > 0) kill(worker_pid[s], SIGTERM);
    for (int s = 0; s < capacity; s++)
        if (worker_pid[s] > 0) waitpid(worker_pid[s], NULL, 0);
    remove_ipc();
    return 0;
}
