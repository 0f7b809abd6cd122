/* bench/identify: Identify round trips through a running diffsynthd, timed by a client.
 *
 * usage: identify_bench SOCKET REPEATS PATH...
 * Prints one JSON line: the hash the daemon answered and the median / min seconds per request.
 * The anchor (upstream's hash_model_file on the same files) is timed by upstream_hash.py in the
 * same run; bench/identify/run.sh prints the ratio. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/common/bench_util.h"
#include "client/diffsynth_client.h"

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s SOCKET REPEATS PATH...\n", argv[0]);
        return 2;
    }
    int repeats = atoi(argv[2]);
    if (repeats < 1) {
        fprintf(stderr, "identify_bench: REPEATS must be >= 1\n");
        return 2;
    }
    ds_client *client = ds_client_new();
    if (!client || ds_client_connect(client, argv[1]) != DS_CLIENT_OK) {
        fprintf(stderr, "identify_bench: %s\n", client ? ds_client_last_error(client) : "out of memory");
        return 1;
    }

    diffsynth_v1_Envelope request = diffsynth_v1_Envelope_init_zero;
    request.which_body = diffsynth_v1_Envelope_identify_tag;
    request.body.identify.paths_count = (pb_size_t)(argc - 3);
    request.body.identify.paths = argv + 3;

    double *times = calloc((size_t)repeats + 1, sizeof *times);
    char hash[64] = "";
    for (int i = 0; i <= repeats; i++) {  /* i == 0 warms the page cache and the daemon */
        request.request_id = ds_client_next_id(client);
        diffsynth_v1_Envelope response;
        double start = ds_bench_now_s();
        int rc = ds_client_call(client, &request, &response, 10000, NULL, NULL);
        double elapsed = ds_bench_now_s() - start;
        if (rc != DS_CLIENT_OK) {
            fprintf(stderr, "identify_bench: %s\n", ds_client_last_error(client));
            return 1;
        }
        if (i > 0)
            times[i - 1] = elapsed;
        else if (response.body.identify_result.model_hash)
            snprintf(hash, sizeof hash, "%s", response.body.identify_result.model_hash);
        ds_client_envelope_free(&response);
    }
    qsort(times, (size_t)repeats, sizeof *times, ds_bench_compare_double);
    printf("{\"model_hash\": \"%s\", \"median_s\": %.9f, \"min_s\": %.9f, \"repeats\": %d}\n", hash,
           times[repeats / 2], times[0], repeats);
    free(times);
    ds_client_close(client);
    return 0;
}
