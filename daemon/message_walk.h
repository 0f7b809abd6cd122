/* Walks over protobuf-c messages through their descriptors, so a field added to the .proto is
 * covered without a line here: the checks and sums the daemon applies to every request
 * whatever its body. Pure: no daemon state, no I/O; fuzzable with the frame decoder.
 */
#ifndef DS_DAEMON_MESSAGE_WALK_H
#define DS_DAEMON_MESSAGE_WALK_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

/* Fields nested deeper than this are not walked: far beyond the .proto's own depth, a bound
 * on recursion should a descriptor ever refer to itself. */
#define DS_MESSAGE_WALK_MAX_DEPTH 16

/* Every string field of `msg` and of the messages inside it (set oneof members and repeated
 * entries included) is valid UTF-8: INVALID_ARGUMENT naming the field's path
 * ("load.client_name", "run_step.inputs[2].name") and the offending byte otherwise. Strings are
 * listed back to every client, and a strict protobuf decoder refuses a reply holding one that
 * is not UTF-8. */
int ds_message_check_strings(const ProtobufCMessage *msg, ds_error *err);

/* The payload bytes of every bytes field of `msg` and of the messages inside it: what the
 * request carries inline (tensor data) and a queued job keeps. */
uint64_t ds_message_bytes_total(const ProtobufCMessage *msg);

/* Checks the wire encoding `data[0..len)` of a message of type `desc`, which protobuf-c has
 * already unpacked: no string field holds a NUL byte. protobuf-c keeps strings as C strings,
 * so "alice\0x" would reach the daemon as "alice"; the bytes must be refused before that
 * truncation. INVALID_ARGUMENT naming the field's path otherwise. */
int ds_wire_check_strings_nul(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                              size_t len, ds_error *err);

#endif
