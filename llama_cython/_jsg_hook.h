// Forced into llama.cpp's common/json-schema-to-grammar.cpp when setup.py compiles it (-include):
// the converter prints its warnings ("pattern ... is not supported, accepting any string") with
// fprintf(stderr, ...); this sends them to llc_jsg_warn instead, which _json_schema.cpp keeps
// so that the conversion can be refused with the converter's own words.
#pragma once
#include <cstdio>
#include <cstdarg>
int llc_jsg_fprintf(FILE * stream, const char * fmt, ...);
#define fprintf llc_jsg_fprintf
