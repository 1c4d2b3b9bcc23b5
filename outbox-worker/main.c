/* The single-role binary: the same process model as `chorus run --roles outbox`. */
#include "outbox.h"

int main(int argc, char **argv)
{
    const role_def *roles[] = {&outbox_role};
    return app_main(argc, argv, roles, 1, "outbox");
}
