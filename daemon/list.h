/* The intrusive lists the daemon links its objects in (connections, admission tickets, the
 * scheduler's queues): the links live in the objects, so linking never allocates, and these
 * macros serve every type with `next` (and `prev`) fields. */
#ifndef DS_DAEMON_LIST_H
#define DS_DAEMON_LIST_H

/* Doubly linked, from `head`: `node` becomes the first. */
#define DS_LIST_PUSH_FRONT(head, node)                                                       \
    do {                                                                                     \
        (node)->prev = NULL;                                                                 \
        (node)->next = (head);                                                               \
        if (head)                                                                            \
            (head)->prev = (node);                                                           \
        (head) = (node);                                                                     \
    } while (0)

/* Doubly linked, from `head`: `node` taken out (its own links left as they were). */
#define DS_LIST_UNLINK(head, node)                                                           \
    do {                                                                                     \
        if ((node)->prev)                                                                    \
            (node)->prev->next = (node)->next;                                               \
        else                                                                                 \
            (head) = (node)->next;                                                           \
        if ((node)->next)                                                                    \
            (node)->next->prev = (node)->prev;                                               \
    } while (0)

/* Singly linked FIFO from `head` to `tail`: `node` appended. */
#define DS_FIFO_PUSH(head, tail, node)                                                       \
    do {                                                                                     \
        (node)->next = NULL;                                                                 \
        if (tail)                                                                            \
            (tail)->next = (node);                                                           \
        else                                                                                 \
            (head) = (node);                                                                 \
        (tail) = (node);                                                                     \
    } while (0)

#endif
