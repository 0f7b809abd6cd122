// The C interface of sentencepiece.h over sentencepiece::SentencePieceProcessor, choosing among
// the library's n-best segmentations as Hugging Face tokenizers does. No C++ exception crosses
// into C: each entry point catches them and returns a status.
#include "tokenizers/sentencepiece.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

struct ds_spm {
    sentencepiece::SentencePieceProcessor processor;
    double unk_score; // what Hugging Face's Unigram scores an unknown character: min score - 10
};

namespace {

// Candidates asked of the library first; doubled while they are all tied, up to its limit.
constexpr int kFirstNBest = 16;
constexpr int kMaxNBest = 256;

// The score Hugging Face tokenizers gives a segmentation: its Unigram search adds the pieces'
// scores left to right in double (the library adds them in float), and an unknown character
// costs unk_score each, also within a run the output fuses into one <unk>.
double hf_score(const ds_spm *spm, const sentencepiece::ImmutableSentencePieceText &path)
{
    double sum = 0;
    for (size_t k = 0; k < path.pieces_size(); k++) {
        const auto piece = path.pieces(static_cast<int>(k));
        if (spm->processor.IsUnknown(static_cast<int>(piece.id()))) {
            for (const unsigned char c : piece.piece())
                if ((c & 0xC0) != 0x80)
                    sum += spm->unk_score;
        } else {
            sum += spm->processor.GetScore(static_cast<int>(piece.id()));
        }
    }
    return sum;
}

// Where each piece starts in the normalised text (bytes).
std::vector<size_t> starts(const sentencepiece::ImmutableSentencePieceText &path)
{
    std::vector<size_t> out;
    size_t at = 0;
    for (size_t k = 0; k < path.pieces_size(); k++) {
        out.push_back(at);
        at += path.pieces(static_cast<int>(k)).piece().size();
    }
    return out;
}

// Between segmentations of equal score, the one Hugging Face's search keeps: it walks end
// positions left to right and keeps the first of equal candidates for each, so the last piece
// that starts earlier wins, then the piece before it, and so on.
bool hf_prefers(const std::vector<size_t> &a, const std::vector<size_t> &b)
{
    size_t i = a.size(), j = b.size();
    while (i > 0 && j > 0) {
        i--;
        j--;
        if (a[i] != b[j])
            return a[i] < b[j];
    }
    return false;
}

} // namespace

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
        double min_score = 0;
        for (int i = 0; i < spm->processor.GetPieceSize(); i++)
            min_score = std::min(min_score, static_cast<double>(spm->processor.GetScore(i)));
        spm->unk_score = min_score - 10.0;
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
        if (len == 0)
            return DS_OK;
        // The library's best segmentation in double precision is among its n-best in float;
        // the candidates tied with it must all be there to pick among them.
        sentencepiece::ImmutableNBestSentencePieceText nbest;
        std::vector<double> scores;
        for (int n = kFirstNBest;; n *= 2) {
            const sentencepiece::util::Status status =
                spm->processor.NBestEncode(absl::string_view(text, len), n, nbest.mutable_proto());
            if (!status.ok())
                return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "SentencePiece encode: %s",
                                    status.ToString().c_str());
            scores.clear();
            for (size_t i = 0; i < nbest.nbests_size(); i++)
                scores.push_back(hf_score(spm, nbest.nbests(static_cast<int>(i))));
            const double best = *std::max_element(scores.begin(), scores.end());
            if (nbest.nbests_size() < static_cast<size_t>(n) || scores.back() < best ||
                n >= kMaxNBest)
                break;
        }
        size_t pick = 0;
        for (size_t i = 1; i < scores.size(); i++) {
            if (scores[i] > scores[pick] ||
                (scores[i] == scores[pick] &&
                 hf_prefers(starts(nbest.nbests(static_cast<int>(i))),
                            starts(nbest.nbests(static_cast<int>(pick))))))
                pick = i;
        }
        const auto path = nbest.nbests(static_cast<int>(pick));
        const size_t count_ = path.pieces_size();
        if (count_ == 0)
            return DS_OK;
        int32_t *out = static_cast<int32_t *>(std::malloc(count_ * sizeof *out));
        if (!out)
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory for %zu ids",
                                count_);
        for (size_t i = 0; i < count_; i++)
            out[i] = static_cast<int32_t>(path.pieces(static_cast<int>(i)).id());
        *ids = out;
        *count = count_;
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
