// Bounded top-k heap (or collector) shared by every kernel (compiled for the baseline target only).
#include <utility>

#include "topk.h"

namespace fastemb {

namespace {

// a is worse than b: lower score, or equal score and larger id (ties go to the smaller id).
inline bool worse(const TopK& h, float sa, int64_t pa, float sb, int64_t pb) {
    return sa < sb || (sa == sb && h.ids[pa] > h.ids[pb]);
}

void sift_down(TopK& h, int32_t i) {
    const int32_t n = h.size;
    for (;;) {
        int32_t w = i;
        const int32_t l = 2 * i + 1, r = l + 1;
        if (l < n && worse(h, h.score[l], h.pos[l], h.score[w], h.pos[w])) w = l;
        if (r < n && worse(h, h.score[r], h.pos[r], h.score[w], h.pos[w])) w = r;
        if (w == i) return;
        std::swap(h.score[i], h.score[w]);
        std::swap(h.pos[i], h.pos[w]);
        i = w;
    }
}

}  // namespace

void topk_push(TopK& h, float score, int64_t pos) {
    if (h.sink) {
        h.sink->score.push_back(score);
        h.sink->pos.push_back(pos);
        return;
    }
    if (h.size < h.cap) {
        int32_t i = h.size++;
        h.score[i] = score;
        h.pos[i] = pos;
        while (i > 0) {  // sift up
            const int32_t parent = (i - 1) / 2;
            if (!worse(h, h.score[i], h.pos[i], h.score[parent], h.pos[parent])) break;
            std::swap(h.score[i], h.score[parent]);
            std::swap(h.pos[i], h.pos[parent]);
            i = parent;
        }
        if (h.size == h.cap) h.threshold = h.score[0];
        return;
    }
    if (!worse(h, h.score[0], h.pos[0], score, pos)) return;
    h.score[0] = score;
    h.pos[0] = pos;
    sift_down(h, 0);
    h.threshold = h.score[0];
}

}  // namespace fastemb
