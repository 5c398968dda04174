// Connects with one JDBC URL exactly as `jitproxy connect --print-jdbc` prints it (the user is in
// the URL; the password comes from the JDBC_PASSWORD environment variable, never a command line),
// runs one query and prints `driver=`, `result=` or `error=<code> <message and causes>`.
import java.sql.*;
import java.util.Properties;

public class UrlCheck {
    public static void main(String[] args) {
        Properties props = new Properties();
        props.setProperty("password", System.getenv("JDBC_PASSWORD"));
        try (Connection c = DriverManager.getConnection(args[0], props)) {
            System.out.println("driver=" + c.getMetaData().getDriverVersion());
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery(args[1])) {
                r.next();
                System.out.println("result=" + r.getString(1));
            }
        } catch (SQLException e) {
            StringBuilder why = new StringBuilder(e.getMessage());
            for (Throwable t = e.getCause(); t != null; t = t.getCause()) why.append(" | ").append(t);
            System.out.println("error=" + e.getErrorCode() + " " + why.toString().replace('\n', ' '));
            System.exit(2);
        }
    }
}
