/* Warmup-stable-decay schedule (lib/schedule.h). */
#include "schedule.h"

ra_wsd ra_wsd_default(double peak, int64_t total) {
    ra_wsd s = {peak, total, 0.1, 0.1};
    return s;
}

double ra_wsd_lr(const ra_wsd *s, int64_t step) {
    if (step < 0 || step >= s->total) return 0.0;
    double f = 1.0, W = s->warmup * (double)s->total, Dc = s->decay * (double)s->total;
    if (W > 0) {
        double up = (double)(step + 1) / W;
        if (up < f) f = up;
    }
    if (Dc > 0) {
        double down = (double)(s->total - step) / Dc;
        if (down < f) f = down;
    }
    return s->peak * f;
}
