// The glue between llama_cython and llama.cpp's JSON-schema converter. Besides the entry point
// declared in _json_schema.h, it defines the three string helpers of common/common.h that the
// converter calls: linking all of llama.cpp's `common` library (chat parsers, downloads, jinja)
// for them would cost minutes of build for nothing else.
#include "_json_schema.h"

#include <cstdarg>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "json-schema-to-grammar.h"
#include "json.h"

std::string string_join(const std::vector<std::string> & values, const std::string & sep) {
    std::string joined;
    for (size_t i = 0; i < values.size(); ++i) {
        if (i) {
            joined += sep;
        }
        joined += values[i];
    }
    return joined;
}

std::vector<std::string> string_split(const std::string & text, const std::string & sep) {
    std::vector<std::string> parts;
    if (sep.empty()) {             // would never advance
        parts.push_back(text);
        return parts;
    }
    size_t from = 0;
    for (size_t at = text.find(sep); at != std::string::npos; at = text.find(sep, from)) {
        parts.push_back(text.substr(from, at - from));
        from = at + sep.size();
    }
    parts.push_back(text.substr(from));
    return parts;
}

std::string string_repeat(const std::string & text, size_t n) {
    std::string out;
    out.reserve(text.size() * n);
    while (n--) {
        out += text;
    }
    return out;
}

// Warnings of the conversion running in this thread (see _jsg_hook.h).
static thread_local std::string * jsg_warnings = nullptr;

int llc_jsg_fprintf(FILE * stream, const char * fmt, ...) {
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (jsg_warnings != nullptr) {
        jsg_warnings->append(buf);
        return n;
    }
    return fputs(buf, stream) >= 0 ? n : -1;
}

int llc_schema_to_gbnf(const char * json_text, size_t n, std::string * out, std::string * err) {
    std::string warnings;
    jsg_warnings = &warnings;
    int rc = 1;
    try {
        common_json schema = common_json::parse(std::string(json_text, n));
        *out = json_schema_to_grammar(schema, true);
        rc = 0;
    } catch (const std::exception & e) {
        *err = e.what();
    } catch (...) {
        *err = "unknown error in the JSON schema converter";
    }
    jsg_warnings = nullptr;
    if (rc == 0 && !warnings.empty()) {
        // "WARNING: JSON schema conversion was incomplete: pattern ^...$ is not supported (...),
        // accepting any string": refused, the caller asked for that pattern.
        const std::string tag = "incomplete: ";
        size_t at = warnings.find(tag);
        *err = at == std::string::npos ? warnings : warnings.substr(at + tag.size());
        while (!err->empty() && (err->back() == '\n' || err->back() == ' ')) {
            err->pop_back();
        }
        out->clear();
        rc = 1;
    }
    return rc;
}
