/* The single-role binary: the same process model as `chorus run --roles wss`. */
#include "wss.h"

int main(int argc, char **argv)
{
    const role_def *roles[] = {&wss_role};
    return app_main(argc, argv, roles, 1, "wss");
}
