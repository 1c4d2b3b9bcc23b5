/* The single-role binary: the same process model as `chorus run --roles indexer`. */
#include "indexer.h"

int main(int argc, char **argv)
{
    const role_def *roles[] = {&indexer_role};
    return app_main(argc, argv, roles, 1, "indexer");
}
