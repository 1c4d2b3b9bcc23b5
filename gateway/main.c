/* The single-role binary: the same process model as `chorus run --roles gateway`.
 * `chorus-gateway routes` prints the REST routes, one "METHOD /path" a line, which the
 * tests compare with the OpenAPI document. */
#include <stdio.h>
#include <string.h>

#include "api.h"
#include "gateway.h"

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "routes") == 0) {
        api_print_routes(stdout);
        return 0;
    }
    const role_def *roles[] = {&gateway_role};
    return app_main(argc, argv, roles, 1, "gateway");
}
