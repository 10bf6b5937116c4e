// JSON Schema -> GBNF through llama.cpp's own converter (common/json-schema-to-grammar.cpp,
// compiled into the core by setup.py). Declared here for Cython; defined in _json_schema.cpp.
#pragma once
#include <string>

// 0: ``out`` holds the grammar. 1: ``err`` says why the schema was refused (a JSON syntax error,
// an unresolved $ref, an invalid pattern, or a pattern the converter would have replaced by
// "any string", which we refuse rather than constrain less than asked). Never throws.
int llc_schema_to_gbnf(const char * json_text, size_t n, std::string * out, std::string * err);
