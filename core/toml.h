/* toml.h: TOML 1.0 parser producing an ordered tree. Every key and value carries its
 * source line and column (1-based) so the config layer can point at the byte that is wrong.
 * Invariants: input is never modified; zt_parse either returns a complete tree or NULL with
 * "file:line:col: message" in err; strings are UTF-8 with their real length (may hold NUL). */
#ifndef ZP_TOML_H
#define ZP_TOML_H
#include <stddef.h>
#include <stdint.h>

typedef enum {
  ZT_TABLE, ZT_ARRAY, ZT_STRING, ZT_INTEGER, ZT_FLOAT, ZT_BOOL,
  ZT_DATETIME,        /* offset date-time: 1979-05-27T07:32:00Z */
  ZT_DATETIME_LOCAL,  /* 1979-05-27T07:32:00 */
  ZT_DATE_LOCAL,      /* 1979-05-27 */
  ZT_TIME_LOCAL       /* 07:32:00 */
} zt_type;

typedef struct zt_value zt_value;

/* Date-time parts; unused parts are 0. nanos: fractional seconds in ns (precision beyond
 * ns is truncated). offset_min: minutes east of UTC (only for ZT_DATETIME; "Z" = 0). */
typedef struct {
  int year, month, day, hour, minute, second;
  int32_t nanos;
  int frac_digits;      /* digits written in the source (for faithful re-printing) */
  int offset_min;
} zt_datetime;

zt_value* zt_parse(const char* text, size_t len, const char* filename, char* err, size_t errlen);
void zt_free(zt_value* v);

zt_type zt_kind(const zt_value* v);
const char* zt_type_name(zt_type t);   /* "table", "array", "string", "integer", ... */
int zt_line(const zt_value* v);
int zt_col(const zt_value* v);

/* tables: keys in document order */
size_t zt_table_len(const zt_value* t);
const char* zt_table_key(const zt_value* t, size_t i);   /* NUL-terminated; see _key_len */
size_t zt_table_key_len(const zt_value* t, size_t i);
int zt_table_key_line(const zt_value* t, size_t i);
int zt_table_key_col(const zt_value* t, size_t i);
zt_value* zt_table_at(const zt_value* t, size_t i);
zt_value* zt_table_get(const zt_value* t, const char* key);   /* NULL if absent */

/* arrays */
size_t zt_array_len(const zt_value* a);
zt_value* zt_array_at(const zt_value* a, size_t i);

/* scalars */
const char* zt_string(const zt_value* v);     /* NUL-terminated */
size_t zt_string_len(const zt_value* v);
int64_t zt_int(const zt_value* v);
double zt_float(const zt_value* v);
int zt_bool(const zt_value* v);
const zt_datetime* zt_dt(const zt_value* v);

/* Build/modify (used by --set overrides): parse a single TOML value "1e-3", "\"x\"", "[1,2]"
 * and set it at a dotted path, creating tables as needed. Returns 0, or -1 with err. */
zt_value* zt_parse_value(const char* text, const char* origin, char* err, size_t errlen);
int zt_table_set(zt_value* root, const char* dotted_path, zt_value* val, char* err, size_t errlen);

/* Tagged JSON (toml-test decoder contract) to a stream. */
#include <stdio.h>
int zt_write_tagged_json(const zt_value* v, FILE* out);
#endif
