// The C interface of sentencepiece.h over sentencepiece::SentencePieceProcessor. No C++
// exception crosses into C: each entry point catches them and returns a status.
#include "tokenizers/sentencepiece.h"

#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

struct ds_spm {
    sentencepiece::SentencePieceProcessor processor;
};

extern "C" int ds_spm_load(const char *path, ds_spm **out, ds_error *err)
{
    *out = nullptr;
    try {
        ds_spm *spm = new ds_spm;
        const sentencepiece::util::Status status = spm->processor.Load(path);
        if (!status.ok()) {
            const bool missing = status.code() == sentencepiece::util::StatusCode::kNotFound;
            delete spm;
            return ds_error_set(err, missing ? DS_ERR_NOT_FOUND : DS_ERR_INVALID_ARGUMENT,
                                "%s: %s SentencePiece model: %s", path,
                                missing ? "no" : "not a valid", status.ToString().c_str());
        }
        *out = spm;
        return DS_OK;
    } catch (const std::bad_alloc &) {
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory loading the model",
                            path);
    } catch (const std::exception &e) {
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: SentencePiece failed: %s", path, e.what());
    }
}

extern "C" void ds_spm_free(ds_spm *spm)
{
    delete spm;
}

extern "C" int ds_spm_encode(const ds_spm *spm, const char *text, size_t len, int32_t **ids,
                             size_t *count, ds_error *err)
{
    *ids = nullptr;
    *count = 0;
    try {
        std::vector<int> pieces;
        const sentencepiece::util::Status status =
            spm->processor.Encode(absl::string_view(text, len), &pieces);
        if (!status.ok())
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "SentencePiece encode: %s",
                                status.ToString().c_str());
        if (pieces.empty())
            return DS_OK;
        int32_t *out = static_cast<int32_t *>(std::malloc(pieces.size() * sizeof *out));
        if (!out)
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory for %zu ids",
                                pieces.size());
        for (size_t i = 0; i < pieces.size(); i++)
            out[i] = pieces[i];
        *ids = out;
        *count = pieces.size();
        return DS_OK;
    } catch (const std::bad_alloc &) {
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory encoding %zu bytes",
                            len);
    } catch (const std::exception &e) {
        return ds_error_set(err, DS_ERR_INTERNAL, "SentencePiece encode failed: %s", e.what());
    }
}

extern "C" int32_t ds_spm_eos_id(const ds_spm *spm)
{
    return spm->processor.eos_id();
}

extern "C" int32_t ds_spm_pad_id(const ds_spm *spm)
{
    return spm->processor.pad_id();
}

extern "C" int32_t ds_spm_unk_id(const ds_spm *spm)
{
    return spm->processor.unk_id();
}

extern "C" size_t ds_spm_vocab_size(const ds_spm *spm)
{
    return static_cast<size_t>(spm->processor.GetPieceSize());
}
