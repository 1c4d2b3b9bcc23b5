/* The single-role binary: the same process model as `chorus run --roles gateway`. */
#include "gateway.h"

int main(int argc, char **argv)
{
    const role_def *roles[] = {&gateway_role};
    return app_main(argc, argv, roles, 1, "gateway");
}
